//! Events loaded into PostgreSQL with `COPY`, the bulk path: no statement to plan, no array
//! parameters to parse, rows streamed in the text format.
//!
//! Measured by hand on the benchmark's database, 50,000 events: 286-318 ms by `COPY` against
//! 480-504 ms by the `INSERT ... SELECT FROM unnest(...)` it replaces for batches of new events
//! (docs/09-performance.md, "eleventh sitting").

use crate::StoreError;
use crate::events::Event;

/// The columns loaded, in the order [`rows`] writes them.
const COPY: &str = "COPY analytics_events (event_id, user_id, org_id, provider, model, tokens, outcome, occurred_at) \
                    FROM STDIN";

/// Loads `events`, in their order, in one transaction that first takes
/// [`crate::advisory_locks::ANALYTICS_RECORD`] (held to its commit), so every row draws its
/// `seq` under the lock, as every insert of events does.
///
/// It runs on a task of its own ([`crate::database::run_detached`]): a caller that gives up
/// half-way cannot leave a load or a transaction open on a pooled connection. An event id recorded before fails the whole load
/// with a unique violation, and nothing is written.
pub(super) async fn load(bulk: &sqlx::PgPool, events: &[Event]) -> Result<(), StoreError> {
    let rows = rows(events);
    let bulk = bulk.clone();
    let load = async move {
        let mut tx = bulk.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(crate::advisory_locks::ANALYTICS_RECORD)
            .execute(&mut *tx)
            .await?;
        let mut copy = tx.copy_in_raw(COPY).await?;
        copy.send(rows.into_bytes()).await?;
        copy.finish().await?;
        tx.commit().await
    };
    Ok(crate::database::run_detached(load).await?)
}

/// `events` in `COPY`'s text format: a line an event, columns separated by tabs.
fn rows(events: &[Event]) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(events.len() * 160);
    for e in events {
        // Writing to a `String` cannot fail.
        let _ = write!(text, "{}\t{}\t", e.id, e.user_id);
        match e.org_id {
            Some(org) => {
                let _ = write!(text, "{org}");
            }
            None => text.push_str(NULL),
        }
        text.push('\t');
        push_field(&mut text, &e.provider);
        text.push('\t');
        match &e.model {
            Some(model) => push_field(&mut text, model),
            None => text.push_str(NULL),
        }
        let tokens = i64::try_from(e.tokens).unwrap_or(i64::MAX);
        let _ = writeln!(text, "\t{tokens}\t{}\t{}", e.outcome.as_str(), e.occurred_at);
    }
    text
}

/// How the text format writes NULL.
const NULL: &str = "\\N";

/// Appends `value` with the characters the text format gives a meaning escaped.
fn push_field(text: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => text.push_str("\\\\"),
            '\t' => text.push_str("\\t"),
            '\n' => text.push_str("\\n"),
            '\r' => text.push_str("\\r"),
            c => text.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::events::Outcome;

    #[test]
    fn each_event_is_a_line_of_eight_columns_with_nulls_and_special_characters_escaped() {
        let (id, user, org) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let event = |org_id, model: Option<&str>| Event {
            id,
            outcome: Outcome::RateLimited,
            user_id: user,
            org_id,
            provider: "openai".into(),
            model: model.map(String::from),
            tokens: 12,
            occurred_at: 1_700_000_000_000,
        };
        let text = rows(&[event(None, None), event(Some(org), Some("a\tb\nc\\d\re"))]);
        assert_eq!(
            text,
            format!(
                "{id}\t{user}\t\\N\topenai\t\\N\t12\trate_limited\t1700000000000\n\
                 {id}\t{user}\t{org}\topenai\ta\\tb\\nc\\\\d\\re\t12\trate_limited\t1700000000000\n"
            )
        );
    }
}
