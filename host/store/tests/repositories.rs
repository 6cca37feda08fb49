//! One repository suite, run on SQLite and again on the real PostgreSQL: users and orgs, API
//! keys, quotas, purchases with their idempotency keys and saga steps, policy versions and
//! bindings, the ledger's group commit (two writers arbitrating one quota), the outbox relay
//! and the SQL analytics sink. (Which PostgreSQL, and what happens without one: `common`.)
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::{TestDb, debit, user};
use leaky_store::analytics::{AnalyticsSink, ReportQuery, SqlAnalytics, Totals};
use leaky_store::bus::{BoxFuture, EventBus, StoredEvent};
use leaky_store::commit_feed::CommitFeed;
use leaky_store::events::{Event, Outcome};
use leaky_store::ledger::{Arbiter, Committed, Debit, LedgerWriter, Scope, Standing, WRITEBACK_EVERY};
use leaky_store::policies::{self, Binding, NewVersion};
use leaky_store::purchases::{self, Claim};
use leaky_store::quotas::{self, OwnerType, Period};
use leaky_store::{Database, StoreError, api_keys, now_ms, orgs, outbox, users};

use uuid::Uuid;

on_both_databases!(
    users_and_orgs,
    api_keys_are_found_by_hash_until_revoked,
    quotas_keep_used_across_limit_changes,
    idempotency_keys_and_the_purchase_saga,
    policy_versions_activations_and_bindings,
    replicas_importing_one_component_at_once_make_one_version,
    two_writers_never_spend_more_than_a_quota,
    the_database_decides_in_the_stored_period_with_and_without_an_org,
    a_sole_writer_adds_up_what_its_book_decided,
    the_relay_publishes_every_committed_event_in_order,
    the_running_relay_publishes_handed_over_and_interleaved_events_in_order,
    a_commit_that_fails_part_way_writes_nothing_and_the_next_one_commits,
    text_a_batch_carries_is_stored_as_it_was_given,
    published_events_past_their_keeping_time_are_pruned_and_the_rest_kept,
    the_sql_sink_counts_each_event_once,
    a_cancelled_begin_leaves_no_transaction_open,
);

async fn users_and_orgs(t: &TestDb) {
    let pool = t.db.pool();
    let alice = users::create(pool, "alice", "alice@example.com", "h1", &["user"]).await.unwrap();
    let taken = users::create(pool, "alice", "other@example.com", "h2", &["user"]).await;
    assert!(matches!(taken, Err(StoreError::Conflict(_))), "{taken:?}");
    assert_eq!(users::by_username(pool, "alice").await.unwrap().unwrap().id, alice.id);
    assert!(users::by_username(pool, "nobody").await.unwrap().is_none());
    let roles = vec!["user".to_string(), "admin".to_string()];
    assert_eq!(users::set_roles(pool, alice.id, &roles).await.unwrap().unwrap().roles, roles);
    users::set_password(pool, alice.id, "h3").await.unwrap();

    let org = orgs::create(pool, "acme").await.unwrap();
    assert!(matches!(orgs::create(pool, "acme").await, Err(StoreError::Conflict(_))));
    assert_eq!(orgs::by_id(pool, org.id).await.unwrap().unwrap().name, "acme");
    users::set_org(pool, alice.id, org.id).await.unwrap();
    let stored = users::by_id(pool, alice.id).await.unwrap().unwrap();
    assert_eq!((stored.org_id, stored.password_hash.as_str()), (Some(org.id), "h3"));
    assert!(users::set_org(pool, Uuid::now_v7(), org.id).await.unwrap().is_none(), "no such user");
}

async fn api_keys_are_found_by_hash_until_revoked(t: &TestDb) {
    let pool = t.db.pool();
    let owner = user(&t.db, "keyholder").await;
    let key = api_keys::create(pool, owner, "ci", "lt_abc", "hash-1", None).await.unwrap();
    api_keys::create(pool, owner, "laptop", "lt_def", "hash-2", Some(now_ms() + 60_000)).await.unwrap();
    assert_eq!(api_keys::list(pool, owner).await.unwrap().len(), 2);
    assert_eq!(api_keys::live_by_hash(pool, "hash-1").await.unwrap().unwrap().id, key.id);
    assert!(api_keys::revoke(pool, owner, key.id).await.unwrap());
    assert!(!api_keys::revoke(pool, owner, key.id).await.unwrap(), "already revoked");
    assert!(api_keys::live_by_hash(pool, "hash-1").await.unwrap().is_none());
    assert!(api_keys::live_by_hash(pool, "hash-2").await.unwrap().is_some());
}

async fn quotas_keep_used_across_limit_changes(t: &TestDb) {
    let owner = user(&t.db, "quota").await;
    assert!(quotas::get(&t.db, OwnerType::User, owner, "openai").await.unwrap().is_none());
    let q = quotas::put(&t.db, OwnerType::User, owner, "openai", 100, Period::None).await.unwrap();
    assert_eq!((q.limit, q.used, q.period), (100, 0, Period::None));
    debit_all(&t.db, owner, None, 30).await;
    let q = quotas::put(&t.db, OwnerType::User, owner, "openai", 500, Period::Daily).await.unwrap();
    assert_eq!((q.limit, q.used, q.period), (500, 30, Period::Daily));
    quotas::put(&t.db, OwnerType::User, owner, "anthropic", 7, Period::Monthly).await.unwrap();
    let listed = quotas::list(&t.db, OwnerType::User, owner).await.unwrap();
    assert_eq!(listed.iter().map(|q| q.provider.as_str()).collect::<Vec<_>>(), ["anthropic", "openai"]);
}

async fn idempotency_keys_and_the_purchase_saga(t: &TestDb) {
    let pool = t.db.pool();
    let buyer = user(&t.db, "buyer").await;
    assert_eq!(purchases::claim(pool, buyer, "k1", "h").await.unwrap(), Claim::New);
    assert_eq!(purchases::claim(pool, buyer, "k1", "h").await.unwrap(), Claim::Running);
    assert_eq!(purchases::claim(pool, buyer, "k1", "other").await.unwrap(), Claim::Mismatch);

    let id = Uuid::now_v7();
    purchases::create(pool, id, buyer, "openai", 250).await.unwrap();
    purchases::attach(pool, buyer, "k1", id).await.unwrap();
    assert_eq!(purchases::running_keys(pool).await.unwrap(), vec![(buyer, "k1".to_string(), Some(id))]);
    assert_eq!(purchases::pending(pool).await.unwrap(), vec![id]);
    purchases::capture_payment(pool, id, 250).await.unwrap();
    purchases::capture_payment(pool, id, 250).await.expect("capturing again changes nothing");
    assert_eq!(purchases::step_status(pool, id, "capture_payment").await.unwrap().as_deref(), Some("DONE"));
    let purchase = purchases::get(pool, id).await.unwrap().unwrap();
    purchases::credit_quota(pool, &purchase, None, 1000).await.unwrap();
    assert!(purchases::credit_quota(pool, &purchase, None, 1000).await.is_err(), "a purchase is credited once");
    let quota = quotas::get(&t.db, OwnerType::User, buyer, "openai").await.unwrap().unwrap();
    assert_eq!(quota.limit, 1250);
    purchases::finish_saga(pool, id, "COMPLETED", "tokens credited").await.unwrap();
    purchases::finish(pool, buyer, "k1", 201, "{\"ok\":true}").await.unwrap();
    assert_eq!(
        purchases::claim(pool, buyer, "k1", "h").await.unwrap(),
        Claim::Replay { status: 201, body: "{\"ok\":true}".into() }
    );
    let done = purchases::get(pool, id).await.unwrap().unwrap();
    assert_eq!(done.status, "COMPLETED");
    assert_eq!(done.steps.len(), 3, "{:?}", done.steps);
    assert!(purchases::pending(pool).await.unwrap().is_empty());

    assert_eq!(purchases::claim(pool, buyer, "k2", "h").await.unwrap(), Claim::New);
    purchases::release(pool, buyer, "k2").await.unwrap();
    assert_eq!(purchases::claim(pool, buyer, "k2", "h").await.unwrap(), Claim::New, "a released key is free");
}

async fn policy_versions_activations_and_bindings(t: &TestDb) {
    let pool = t.db.pool();
    let add = |bytes: &'static [u8], sha: &'static str| {
        let new = NewVersion { name: "swap", kind: "rate-limiter", sha256: sha, component: bytes, source: "api" };
        policies::add_version(pool, new)
    };
    let (v1, created) = add(b"one", "sha-1").await.unwrap();
    assert!(created);
    let (again, created) = add(b"one", "sha-1").await.unwrap();
    assert!(!created && again.version == v1.version, "the same bytes are the same version");
    let (v2, _) = add(b"two", "sha-2").await.unwrap();
    assert_eq!((v1.version, v2.version), (1, 2));
    assert_eq!(policies::component(pool, "swap", 2).await.unwrap().as_deref(), Some(&b"two"[..]));

    let start = policies::generation(pool).await.unwrap();
    assert_eq!(policies::activate(pool, "swap", 1).await.unwrap(), None);
    assert_eq!(policies::activate(pool, "swap", 2).await.unwrap(), Some(1));
    assert_eq!(policies::rollback_target(pool, "swap").await.unwrap(), Some((2, 1)));
    assert_eq!(policies::rollback(pool, "swap").await.unwrap(), Some(1));
    assert_eq!(policies::rollback(pool, "swap").await.unwrap(), None, "nothing earlier than the first");
    assert!(policies::generation(pool).await.unwrap() > start);

    let binding = Binding {
        provider: "acme".into(),
        kind: "rate-limiter".into(),
        module: "swap".into(),
        params: vec![("capacity".into(), "5".into())],
        shadow: Some(("swap".into(), vec![])),
        source: "api".into(),
    };
    policies::replace_bindings(pool, std::slice::from_ref(&binding)).await.unwrap();
    let state = policies::state(pool).await.unwrap();
    assert_eq!(state.bindings, vec![binding]);
    assert_eq!(state.active.iter().map(|v| (v.name.as_str(), v.version)).collect::<Vec<_>>(), [("swap", 1)]);
    policies::set_source(pool, "policies/swap.wasm", "sha-1").await.unwrap();
    assert_eq!(policies::source(pool, "policies/swap.wasm").await.unwrap().as_deref(), Some("sha-1"));
}

/// Replicas starting together on one policy directory each store and activate the same
/// component: one version, one activation, no error.
async fn replicas_importing_one_component_at_once_make_one_version(t: &TestDb) {
    let second = Database::open(&t.url).await.unwrap();
    let imports: Vec<_> = (0..8)
        .map(|i| {
            let db = if i % 2 == 0 { t.db.clone() } else { second.clone() };
            tokio::spawn(async move {
                let new = NewVersion {
                    name: "leaky-bucket",
                    kind: "rate-limiter",
                    sha256: "sha-same",
                    component: b"same bytes",
                    source: "policies/leaky-bucket.wasm",
                };
                let (info, _) = policies::add_version(db.pool(), new).await?;
                policies::activate(db.pool(), &info.name, info.version).await?;
                Ok::<_, StoreError>(info.version)
            })
        })
        .collect();
    for import in imports {
        assert_eq!(import.await.unwrap().unwrap(), 1);
    }
    assert_eq!(policies::versions(t.db.pool()).await.unwrap().len(), 1);
    assert_eq!(policies::rollback_target(t.db.pool(), "leaky-bucket").await.unwrap(), None, "one activation");
    second.pool().close().await;
}

/// Commits `n` one-token debits of `user` through one writer.
async fn debit_all(db: &Database, user: Uuid, org: Option<Uuid>, n: usize) {
    let writer =
        LedgerWriter::start(db, Arbiter::Database, WRITEBACK_EVERY, Arc::new(CommitFeed::new())).await.unwrap();
    for _ in 0..n {
        assert!(matches!(writer.debit(debit(user, org, 1_000_000)).await.unwrap(), Committed::Spent { .. }));
    }
}

/// Two writers (as two replicas would have, each on its own pool) and 64 tasks: 2,000 debits
/// against a user quota of 500, then 600 debits of three users against an org quota of 300.
async fn two_writers_never_spend_more_than_a_quota(t: &TestDb) {
    let second = Database::open(&t.url).await.unwrap();
    let writers = [
        LedgerWriter::start(&t.db, Arbiter::Database, WRITEBACK_EVERY, Arc::new(CommitFeed::new())).await.unwrap(),
        LedgerWriter::start(&second, Arbiter::Database, WRITEBACK_EVERY, Arc::new(CommitFeed::new())).await.unwrap(),
    ];
    let owner = user(&t.db, "spender").await;
    let run = |users: Vec<Uuid>, org: Option<Uuid>, limit: i64, per_task: usize| {
        let tasks: Vec<_> = (0..64)
            .map(|task| {
                let writer = writers[task % 2].clone();
                let user = users[task % users.len()];
                tokio::spawn(async move {
                    let mut outcomes = Vec::new();
                    for _ in 0..per_task {
                        outcomes.push(writer.debit(debit(user, org, limit)).await.unwrap());
                    }
                    outcomes
                })
            })
            .collect();
        async move {
            let mut all = Vec::new();
            for task in tasks {
                all.extend(task.await.unwrap());
            }
            all
        }
    };
    let outcomes = run(vec![owner], None, 500, 2000 / 64 + 1).await;
    let spent = outcomes.iter().filter(|o| matches!(o, Committed::Spent { .. })).count();
    assert_eq!(spent, 500, "exactly the quota is granted");
    assert!(outcomes.iter().all(|o| match o {
        Committed::Spent { user, .. } => user.used <= 500,
        Committed::Refused { scope, standing } => *scope == Scope::User && standing.used == 500,
        Committed::Recorded => false,
    }));
    // Each grant answers the quota as it stood after that debit: one of each count up to 500.
    let mut counts: Vec<i64> = outcomes
        .iter()
        .filter_map(|o| match o {
            Committed::Spent { user, .. } => Some(user.used),
            _ => None,
        })
        .collect();
    counts.sort_unstable();
    assert_eq!(counts, (1..=500).collect::<Vec<i64>>(), "each grant answers the count after it");
    let stored = quotas::get(&t.db, OwnerType::User, owner, "openai").await.unwrap().unwrap();
    assert_eq!((stored.limit, stored.used), (500, 500));
    assert_eq!(leaky_store::ledger::consumed(t.db.pool(), owner, "openai").await.unwrap(), 500);
    assert_eq!(outbox::pending(t.db.pool()).await.unwrap(), 500, "one event per granted debit");

    let org = orgs::create(t.db.pool(), "shared").await.unwrap().id;
    quotas::put(&t.db, OwnerType::Org, org, "openai", 300, Period::None).await.unwrap();
    let members = vec![user(&t.db, "m1").await, user(&t.db, "m2").await, user(&t.db, "m3").await];
    for member in &members {
        users::set_org(t.db.pool(), *member, org).await.unwrap();
    }
    let outcomes = run(members, Some(org), 10_000, 10).await;
    let spent = outcomes.iter().filter(|o| matches!(o, Committed::Spent { .. })).count();
    assert_eq!(spent, 300, "exactly the org quota is granted");
    assert!(outcomes.iter().any(|o| matches!(o, Committed::Refused { scope: Scope::Org, .. })));
    let stored = quotas::get(&t.db, OwnerType::Org, org, "openai").await.unwrap().unwrap();
    assert_eq!(stored.used, 300);
    second.pool().close().await;
}

/// The database arbiter decides in the period the row stores: a daily quota partly spent
/// yesterday counts today's debit from zero, and one spent to its limit yesterday takes it too,
/// while one spent to its limit today refuses it; debits of a user in an org and of one in
/// none, committed together, are each charged as stored.
async fn the_database_decides_in_the_stored_period_with_and_without_an_org(t: &TestDb) {
    let writer =
        LedgerWriter::start(&t.db, Arbiter::Database, WRITEBACK_EVERY, Arc::new(CommitFeed::new())).await.unwrap();
    let owners = [user(&t.db, "partly").await, user(&t.db, "wholly").await, user(&t.db, "today").await];
    let day = 86_400_000;
    let start = Period::Daily.start(now_ms());
    for (owner, used, period_start) in [(owners[0], 2, start - day), (owners[1], 5, start - day), (owners[2], 5, start)]
    {
        quotas::put(&t.db, OwnerType::User, owner, "openai", 5, Period::Daily).await.unwrap();
        sqlx::query("UPDATE quotas SET used = $1, period_start = $2 WHERE owner_id = $3")
            .bind(used)
            .bind(period_start)
            .bind(owner.to_string())
            .execute(t.db.pool())
            .await
            .unwrap();
    }
    let expected = Standing { limit: 5, used: 1, period_start: start, reset_at: Some(start + day) };
    for owner in &owners[..2] {
        let spent = writer.debit(debit(*owner, None, 5)).await.unwrap();
        assert_eq!(spent, Committed::Spent { user: expected, org: None }, "yesterday's spend no longer counts");
    }
    let today = owners[2];
    let refused = writer.debit(debit(today, None, 5)).await.unwrap();
    assert!(matches!(refused, Committed::Refused { scope: Scope::User, standing } if standing.used == 5));

    let org = orgs::create(t.db.pool(), "periodic").await.unwrap().id;
    quotas::put(&t.db, OwnerType::Org, org, "openai", 3, Period::None).await.unwrap();
    let (member, loner) = (user(&t.db, "member of periodic").await, user(&t.db, "loner").await);
    users::set_org(t.db.pool(), member, org).await.unwrap();
    let tasks: Vec<_> = [member, loner, member, loner, member, loner, member, loner]
        .into_iter()
        .map(|owner| {
            let writer = writer.clone();
            // The process's view of the org does not matter: the database charges the stored one.
            tokio::spawn(async move { (owner, writer.debit(debit(owner, None, 100)).await.unwrap()) })
        })
        .collect();
    let mut granted = BTreeMap::new();
    for task in tasks {
        let (owner, outcome) = task.await.unwrap();
        match outcome {
            Committed::Spent { org: charged, .. } => {
                assert_eq!(charged.is_some(), owner == member, "only the member charges the org");
                *granted.entry(owner).or_insert(0) += 1;
            }
            Committed::Refused { scope, .. } => assert_eq!((owner, scope), (member, Scope::Org)),
            Committed::Recorded => panic!("the database arbiter recorded a debit undecided"),
        }
    }
    assert_eq!((granted.get(&member), granted.get(&loner)), (Some(&3), Some(&4)));
    let used =
        |owner_type, owner| async move { quotas::get(&t.db, owner_type, owner, "openai").await.unwrap().unwrap().used };
    assert_eq!((used(OwnerType::Org, org).await, used(OwnerType::User, loner).await), (3, 4));
}

/// A writer whose process is the database's only one (`Arbiter::Caller`) adds what 16 tasks
/// debit to the stored counters without reading them: a first spender's row is created with
/// its limit, an org quota its process charged counts too, one it did not is left alone (and
/// none is created), a later period starts the count again and an earlier one no longer counts.
async fn a_sole_writer_adds_up_what_its_book_decided(t: &TestDb) {
    let writer =
        LedgerWriter::start(&t.db, Arbiter::Caller, WRITEBACK_EVERY, Arc::new(CommitFeed::new())).await.unwrap();
    let org = orgs::create(t.db.pool(), "tallied").await.unwrap().id;
    let day = quotas::put(&t.db, OwnerType::Org, org, "openai", 10_000, Period::Daily).await.unwrap().period_start;
    let uncharged = orgs::create(t.db.pool(), "no quota").await.unwrap().id;
    let (member, loner) = (user(&t.db, "member").await, user(&t.db, "loner").await);
    let charged = |user: Uuid, org: Option<(Uuid, Option<i64>)>| {
        let mut d = debit(user, org.map(|(id, _)| id), 1_000);
        d.org = org;
        d
    };
    let tasks: Vec<_> = (0..16)
        .map(|task| {
            let writer = writer.clone();
            let d = if task % 2 == 0 {
                charged(member, Some((org, Some(day))))
            } else {
                charged(loner, Some((uncharged, None)))
            };
            tokio::spawn(async move {
                for _ in 0..25 {
                    let d = Debit { entry_id: Uuid::now_v7(), ..d.clone() };
                    assert_eq!(writer.debit(d).await.unwrap(), Committed::Recorded);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let used =
        |owner, id| async move { quotas::get(&t.db, owner, id, "openai").await.unwrap().map(|q| (q.limit, q.used)) };
    // Read as the service reads them (the rows with the spend pending write-back), then after
    // the counters were written back to the rows.
    for written_back in [false, true] {
        if written_back {
            writer.write_back().await.unwrap();
        }
        assert_eq!(used(OwnerType::User, member).await, Some((1_000, 200)), "a first spend creates the row");
        assert_eq!(used(OwnerType::User, loner).await, Some((1_000, 200)));
        assert_eq!(used(OwnerType::Org, org).await, Some((10_000, 200)));
        assert_eq!(used(OwnerType::Org, uncharged).await, None, "no org quota is created");
    }
    assert_eq!(leaky_store::ledger::consumed(t.db.pool(), member, "openai").await.unwrap(), 200);
    assert_eq!(outbox::pending(t.db.pool()).await.unwrap(), 400, "one event per debit");

    let next_day = day + 24 * 3600 * 1000;
    let mut late = charged(member, Some((org, Some(next_day))));
    late.cost = 7;
    writer.debit(late).await.unwrap();
    for written_back in [false, true] {
        if written_back {
            writer.write_back().await.unwrap();
        }
        let stored = quotas::get(&t.db, OwnerType::Org, org, "openai").await.unwrap().unwrap();
        assert_eq!((stored.used, stored.period_start), (7, next_day), "a new period starts the count again");
    }
    writer.debit(charged(member, Some((org, Some(day))))).await.unwrap();
    for written_back in [false, true] {
        if written_back {
            writer.write_back().await.unwrap();
        }
        let org_used = used(OwnerType::Org, org).await;
        assert_eq!(org_used, Some((10_000, 7)), "a debit of a period gone by no longer counts");
        assert_eq!(used(OwnerType::User, member).await, Some((1_000, 208)));
    }
}

/// Remembers the ids of what it was given. What it is given as stored in the outbox must be
/// the event as a bus would carry it (topic, key, JSON), so that publishing the stored form
/// sends what publishing the event would.
#[derive(Default)]
struct Recorder(Mutex<Vec<Uuid>>);

impl EventBus for Recorder {
    fn publish<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), StoreError>> {
        self.0.lock().unwrap().extend(events.iter().map(|e| e.id));
        Box::pin(async { Ok(()) })
    }

    fn publish_stored<'a>(&'a self, events: &'a [StoredEvent]) -> BoxFuture<'a, Result<(), StoreError>> {
        for stored in events {
            assert_eq!(StoredEvent::of(&stored.event().unwrap()).unwrap(), *stored);
        }
        self.0.lock().unwrap().extend(events.iter().map(|e| e.id));
        Box::pin(async { Ok(()) })
    }
}

/// 16 tasks, each committing 40 one-token debits of `owner` through one of `writers` in turn;
/// each answers the event ids of its debits.
fn debit_from_tasks(writers: &[LedgerWriter], owner: Uuid) -> Vec<tokio::task::JoinHandle<Vec<Uuid>>> {
    (0..16)
        .map(|task| {
            let writer = writers[task % writers.len()].clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..40 {
                    let d = debit(owner, None, 1_000_000);
                    ids.push(d.event.id);
                    writer.debit(d).await.unwrap();
                }
                ids
            })
        })
        .collect()
}

/// Two writers commit while two relays (each on its own pool) publish: every event is
/// published, none is passed over, and the cursor ends at the last one.
async fn the_relay_publishes_every_committed_event_in_order(t: &TestDb) {
    let second = Database::open(&t.url).await.unwrap();
    let owner = user(&t.db, "relayed").await;
    let bus = Arc::new(Recorder::default());
    let done = Arc::new(AtomicBool::new(false));
    let relays: Vec<_> = [t.db.clone(), second.clone()]
        .into_iter()
        .map(|db| {
            let (bus, done) = (Arc::clone(&bus), Arc::clone(&done));
            tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    outbox::relay_once(&db, bus.as_ref()).await.unwrap();
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let writers = [
        LedgerWriter::start(&t.db, Arbiter::Database, WRITEBACK_EVERY, Arc::new(CommitFeed::new())).await.unwrap(),
        LedgerWriter::start(&second, Arbiter::Database, WRITEBACK_EVERY, Arc::new(CommitFeed::new())).await.unwrap(),
    ];
    let mut committed = Vec::new();
    let tasks = debit_from_tasks(&writers, owner);
    for task in tasks {
        committed.extend(task.await.unwrap());
    }
    done.store(true, Ordering::Relaxed);
    for relay in relays {
        relay.await.unwrap();
    }
    while outbox::relay_once(&t.db, bus.as_ref()).await.unwrap() > 0 {}
    let published: HashSet<Uuid> = bus.0.lock().unwrap().iter().copied().collect();
    let missing = committed.iter().filter(|id| !published.contains(id)).count();
    assert_eq!(missing, 0, "every committed event is published");
    assert_eq!(outbox::pending(t.db.pool()).await.unwrap(), 0);
    second.pool().close().await;
}

/// The relay as the service runs it, beside one writer: 16 tasks debit while purchases commit
/// their events in transactions of their own between the group commits. Every event is
/// published, in `seq` order; on SQLite most batches go from the writer to the bus without
/// being read back from the outbox.
async fn the_running_relay_publishes_handed_over_and_interleaved_events_in_order(t: &TestDb) {
    let owner = user(&t.db, "handed").await;
    let feed = Arc::new(CommitFeed::new());
    let bus = Arc::new(Recorder::default());
    let relay = outbox::spawn_relay(t.db.clone(), Arc::clone(&bus) as Arc<dyn EventBus>, Arc::clone(&feed));
    // As the service runs each database: its book deciding on SQLite, the database on PostgreSQL.
    let sqlite = t.db.backend() == leaky_store::Backend::Sqlite;
    let arbiter = if sqlite { Arbiter::Caller } else { Arbiter::Database };
    let writer = LedgerWriter::start(&t.db, arbiter, WRITEBACK_EVERY, Arc::clone(&feed)).await.unwrap();
    let tasks = debit_from_tasks(&[writer], owner);
    let mut committed = Vec::new();
    for i in 0..5 {
        let id = Uuid::now_v7();
        purchases::create(t.db.pool(), id, owner, "openai", 10).await.unwrap();
        let purchase = purchases::get(t.db.pool(), id).await.unwrap().unwrap();
        purchases::credit_quota(t.db.pool(), &purchase, None, 1_000_000).await.unwrap();
        committed.push(id);
        tokio::time::sleep(std::time::Duration::from_millis(i * 3)).await;
    }
    for task in tasks {
        committed.extend(task.await.unwrap());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while outbox::pending(t.db.pool()).await.unwrap() > 0 {
        assert!(std::time::Instant::now() < deadline, "the relay did not catch up");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    relay.abort();
    let published = bus.0.lock().unwrap().clone();
    let unique: HashSet<Uuid> = published.iter().copied().collect();
    assert_eq!(unique.len(), committed.len(), "every committed event is published");
    assert!(committed.iter().all(|id| unique.contains(id)));
    let mut first_seen: Vec<Uuid> = Vec::new();
    for id in &published {
        if !first_seen.contains(id) {
            first_seen.push(*id);
        }
    }
    let in_seq_order: Vec<Uuid> = outbox::stored(t.db.pool()).await.unwrap().iter().map(|e| e.id).collect();
    assert_eq!(first_seen, in_seq_order, "published in the order committed");
    if sqlite {
        assert!(feed.taken() > 0, "no batch was handed over");
    }
}

/// A group commit whose ledger insert fails (an entry id used before), after its quota update
/// was written: nothing of it stays (counter, ledger, outbox), its debit is refused, and the
/// writer's connection is left outside any transaction, so the next commit goes through.
async fn a_commit_that_fails_part_way_writes_nothing_and_the_next_one_commits(t: &TestDb) {
    let owner = user(&t.db, "failing").await;
    let sqlite = t.db.backend() == leaky_store::Backend::Sqlite;
    let arbiter = if sqlite { Arbiter::Caller } else { Arbiter::Database };
    let writer = LedgerWriter::start(&t.db, arbiter, WRITEBACK_EVERY, Arc::new(CommitFeed::new())).await.unwrap();
    let first = debit(owner, None, 1_000);
    writer.debit(first.clone()).await.unwrap();
    let stored = || async { quotas::get(&t.db, OwnerType::User, owner, "openai").await.unwrap().unwrap().used };
    let outbox_events = || async { outbox::stored(t.db.pool()).await.unwrap().len() };
    let (used, events) = (stored().await, outbox_events().await);
    assert_eq!(used, 1);

    let again = Debit { event: debit(owner, None, 1_000).event, ..first };
    let refused = writer.debit(again).await;
    assert!(matches!(refused, Err(StoreError::CommitFailed(_))), "{refused:?}");
    assert_eq!(stored().await, used, "the counter is as before");
    assert_eq!(outbox_events().await, events, "no event of the failed commit");
    assert_eq!(leaky_store::ledger::consumed(t.db.pool(), owner, "openai").await.unwrap(), 1);

    writer.debit(debit(owner, None, 1_000)).await.unwrap();
    assert_eq!(stored().await, 2, "the next commit goes through");
    assert_eq!(outbox_events().await, events + 1);
}

/// Text of every kind a batch carries (quotes, backslashes, commas, braces, the word NULL,
/// non-ASCII), beside missing values, is stored as it was given by both arbiters: in the ledger,
/// the quota rows and the outbox payloads (PostgreSQL receives each column as one array).
async fn text_a_batch_carries_is_stored_as_it_was_given(t: &TestDb) {
    let awkward = r#"o"pen,ai\{x} NULL é"#;
    for arbiter in [Arbiter::Database, Arbiter::Caller] {
        let owner = user(&t.db, &format!("awkward {arbiter:?}")).await;
        let writer = LedgerWriter::start(&t.db, arbiter, WRITEBACK_EVERY, Arc::new(CommitFeed::new())).await.unwrap();
        let debits: Vec<Debit> = (0..4)
            .map(|i| {
                let mut d = debit(owner, None, 1_000);
                d.provider = awkward.into();
                d.event.provider = awkward.into();
                d.event.model = (i % 2 == 0).then(|| format!("{awkward} model {i}"));
                d.request_id = (i % 2 == 1).then(|| format!("{awkward} request {i}"));
                d
            })
            .collect();
        let answers: Vec<_> = debits
            .iter()
            .map(|d| {
                let (writer, d) = (writer.clone(), d.clone());
                tokio::spawn(async move { writer.debit(d).await })
            })
            .collect();
        for answer in answers {
            answer.await.unwrap().unwrap();
        }
        assert_eq!(leaky_store::ledger::consumed(t.db.pool(), owner, awkward).await.unwrap(), 4);
        for i in [1, 3] {
            let id = format!("{awkward} request {i}");
            assert!(leaky_store::ledger::has_request(t.db.pool(), &id).await.unwrap(), "{id}");
        }
        let quota = quotas::get(&t.db, OwnerType::User, owner, awkward).await.unwrap().unwrap();
        assert_eq!(quota.used, 4);
        for d in &debits {
            let in_outbox = outbox::stored(t.db.pool()).await.unwrap();
            let payload = &in_outbox.iter().find(|e| e.id == d.event.id).expect("the debit's event").payload;
            let stored: Event = serde_json::from_str(payload).unwrap();
            assert_eq!((stored.provider.as_str(), stored.model.as_deref()), (awkward, d.event.model.as_deref()));
        }
    }
}

/// Pruning deletes published events written before the given time, and never one the relay
/// has not published yet, nor a published one still inside its keeping time.
async fn published_events_past_their_keeping_time_are_pruned_and_the_rest_kept(t: &TestDb) {
    let owner = user(&t.db, "pruned").await;
    let writer =
        LedgerWriter::start(&t.db, Arbiter::Database, WRITEBACK_EVERY, Arc::new(CommitFeed::new())).await.unwrap();
    let outbox_events = || async { outbox::stored(t.db.pool()).await.unwrap().len() };
    for _ in 0..12 {
        writer.debit(debit(owner, None, 1_000)).await.unwrap();
    }
    let bus = Recorder::default();
    while outbox::relay_once(&t.db, &bus).await.unwrap() > 0 {}
    assert_eq!(bus.0.lock().unwrap().len(), 12);
    for _ in 0..3 {
        writer.debit(debit(owner, None, 1_000)).await.unwrap();
    }
    assert_eq!((outbox_events().await, outbox::pending(t.db.pool()).await.unwrap()), (15, 3));

    assert_eq!(outbox::prune(t.db.pool(), 0).await.unwrap(), 0, "none is older than the epoch");
    assert_eq!(outbox_events().await, 15);
    assert_eq!(outbox::prune(t.db.pool(), now_ms() + 1).await.unwrap(), 12, "every published one");
    assert_eq!((outbox_events().await, outbox::pending(t.db.pool()).await.unwrap()), (3, 3), "unpublished ones stay");
    while outbox::relay_once(&t.db, &bus).await.unwrap() > 0 {}
    assert_eq!(bus.0.lock().unwrap().len(), 15, "and are published after the prune");

    // The running pruner, keeping nothing, empties the published outbox by itself.
    let pruner = outbox::spawn_pruner(t.db.clone(), std::time::Duration::ZERO, std::time::Duration::from_millis(20));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while outbox_events().await > 0 {
        assert!(std::time::Instant::now() < deadline, "the pruner did not prune");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    pruner.abort();

    // A backlog of several batches, pruned by two pruners at once (two replicas): each row is
    // deleted once, and neither fails.
    sqlx::query(
        "INSERT INTO outbox (event_id, topic, key, payload, created_at) \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 12000) \
         SELECT 'backlog ' || i, 'usage', 'k', '{}', 0 FROM n",
    )
    .execute(t.db.pool())
    .await
    .unwrap();
    sqlx::query("UPDATE outbox_cursor SET last_seq = (SELECT MAX(seq) FROM outbox) WHERE id = 1")
        .execute(t.db.pool())
        .await
        .unwrap();
    let (a, b) = tokio::join!(outbox::prune(t.db.pool(), 1), outbox::prune(t.db.pool(), 1));
    assert_eq!(a.unwrap() + b.unwrap(), 12_000);
    assert_eq!(outbox_events().await, 0);
}

async fn the_sql_sink_counts_each_event_once(t: &TestDb) {
    let sink = SqlAnalytics::new(&t.db);
    let owner = Uuid::now_v7();
    let events: Vec<Event> = (0..5)
        .map(|i| {
            let mut e = debit(owner, None, 10).event;
            e.tokens = 10;
            e.occurred_at = 1_000 + i;
            if i == 4 {
                e.outcome = Outcome::RateLimited;
            }
            e
        })
        .collect();
    sink.record(&events).await.unwrap();
    sink.record(&events).await.unwrap();
    let query =
        ReportQuery { user_id: Some(owner), org_id: None, provider: None, from: 0, to: 10_000, bucket_ms: 1_000 };
    let report = sink.report(&query).await.unwrap();
    assert_eq!(report.totals, Totals { tokens: 40, requests: 4, rate_limited: 1, quota_rejected: 0 });
    assert_eq!(report.series.len(), 1);
    assert_eq!(report.by_provider[0].tokens, 40);
}

/// Callers cancelled at every point of beginning a transaction (a client gone, a timeout) leave
/// no connection of the pool inside a transaction: what is written afterwards is committed.
async fn a_cancelled_begin_leaves_no_transaction_open(t: &TestDb) {
    for i in 0..600 {
        // Dropped after 0 to 1.2 ms: mid-acquire, mid-BEGIN or just after.
        let begin = leaky_store::begin(t.db.pool());
        let started = std::time::Instant::now();
        let give_up = async {
            while started.elapsed() < std::time::Duration::from_micros(i * 2) {
                tokio::task::yield_now().await;
            }
        };
        tokio::select! {
            biased;
            _ = begin => {}
            () = give_up => {}
        }
    }
    let other = Database::open(&t.url).await.unwrap();
    for i in 0..64 {
        let org = orgs::create(t.db.pool(), &format!("after-{i}")).await.unwrap();
        assert!(orgs::by_id(other.readers(), org.id).await.unwrap().is_some(), "write {i} was not committed");
    }
    other.pool().close().await;
}
