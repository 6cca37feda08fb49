//! A statement built at run time, with the placeholders each database wants: `$N` for
//! PostgreSQL (sqlx's own `QueryBuilder` writes `?` for the `Any` driver, which PostgreSQL
//! refuses), plain `?` for SQLite (which finds a `$N` parameter by walking its list of names,
//! so binding the thousands of arguments of a group commit that way takes quadratic time).

use std::fmt::Write as _;

use sqlx::any::{AnyArguments, AnyQueryResult, AnyRow};
use sqlx::{Any, Arguments, Encode, Type};

use crate::{Backend, StoreError};

/// [`Sql::padded_values`] pads its rows to a multiple of this many.
pub const PAD_ROWS: usize = 32;

/// A statement and its arguments.
pub struct Sql<'q> {
    backend: Backend,
    text: String,
    args: AnyArguments<'q>,
    count: usize,
    error: Option<String>,
}

impl<'q> Sql<'q> {
    /// A statement for `backend`, starting with `text`.
    pub fn new(backend: Backend, text: &str) -> Self {
        Self { backend, text: text.to_string(), args: AnyArguments::default(), count: 0, error: None }
    }

    /// Appends SQL text.
    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder bound to `value`.
    pub fn bind<T>(&mut self, value: T) -> &mut Self
    where
        T: 'q + Encode<'q, Any> + Type<Any>,
    {
        self.count += 1;
        match self.backend {
            Backend::Postgres => {
                let _ = write!(self.text, "${}", self.count);
            }
            Backend::Sqlite => self.text.push('?'),
        }
        if let Err(err) = self.args.add(value)
            && self.error.is_none()
        {
            self.error = Some(err.to_string());
        }
        self
    }

    /// The number of the last placeholder bound, to refer to its value again ([`Self::again`]).
    pub(crate) fn bound(&self) -> usize {
        self.count
    }

    /// Appends a placeholder for the value bound as number `n` (PostgreSQL only: its `$N` can be
    /// named twice, so a value the statement reads in two places is sent once).
    pub(crate) fn again(&mut self, n: usize) -> &mut Self {
        debug_assert!(self.backend == Backend::Postgres && (1..=self.count).contains(&n));
        let _ = write!(self.text, "${n}");
        self
    }

    /// Appends `VALUES (...), (...)`, one tuple per item; `row` binds an item's values.
    pub fn values<I>(&mut self, items: I, mut row: impl FnMut(&mut Tuple<'_, 'q>, I::Item)) -> &mut Self
    where
        I: IntoIterator,
    {
        self.text.push_str("VALUES ");
        for (i, item) in items.into_iter().enumerate() {
            self.text.push_str(if i == 0 { "(" } else { ", (" });
            row(&mut Tuple { sql: self, first: true }, item);
            self.text.push(')');
        }
        self
    }

    /// Appends `SELECT * FROM (VALUES (...), ...) WHERE column1 IS NOT NULL`: the rows of
    /// [`values`](Self::values), then rows of `columns` parameters bound to NULL up to the next
    /// multiple of [`PAD_ROWS`], which the `WHERE` drops. The text then depends only on that
    /// multiple, not on the exact number of rows, so SQLite's compiled program for it is reused
    /// from the connection's statement cache instead of parsed and compiled again for nearly
    /// every group commit. Each row must bind `columns` values, the first of them not NULL.
    pub fn padded_values<I>(
        &mut self,
        columns: usize,
        items: I,
        row: impl FnMut(&mut Tuple<'_, 'q>, I::Item),
    ) -> &mut Self
    where
        I: IntoIterator,
        I::IntoIter: ExactSizeIterator,
    {
        let items = items.into_iter();
        let rows = items.len();
        self.text.push_str("SELECT * FROM (");
        self.values(items, row);
        for i in rows..rows.div_ceil(PAD_ROWS).max(1) * PAD_ROWS {
            self.text.push_str(if i == 0 { "(" } else { ", (" });
            let mut padding = Tuple { sql: self, first: true };
            for _ in 0..columns {
                padding.bind(None::<i64>);
            }
            self.text.push(')');
        }
        self.text.push_str(") WHERE column1 IS NOT NULL");
        self
    }

    /// The SQL text so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn take(&mut self) -> Result<(String, AnyArguments<'q>), StoreError> {
        if let Some(err) = self.error.take() {
            return Err(StoreError::Corrupt(format!("cannot bind an argument: {err}")));
        }
        Ok((std::mem::take(&mut self.text), std::mem::take(&mut self.args)))
    }

    /// Runs the statement.
    pub async fn execute<'c, E>(mut self, executor: E) -> Result<AnyQueryResult, StoreError>
    where
        E: sqlx::Executor<'c, Database = Any>,
    {
        let (text, args) = self.take()?;
        Ok(sqlx::query_with(&text, args).execute(executor).await?)
    }

    /// Runs the statement and returns its rows.
    pub async fn fetch_all<'c, E>(mut self, executor: E) -> Result<Vec<AnyRow>, StoreError>
    where
        E: sqlx::Executor<'c, Database = Any>,
    {
        let (text, args) = self.take()?;
        Ok(sqlx::query_with(&text, args).fetch_all(executor).await?)
    }

    /// Runs the statement and returns its one row.
    pub async fn fetch_one<'c, E>(mut self, executor: E) -> Result<AnyRow, StoreError>
    where
        E: sqlx::Executor<'c, Database = Any>,
    {
        let (text, args) = self.take()?;
        Ok(sqlx::query_with(&text, args).fetch_one(executor).await?)
    }
}

/// One parenthesised tuple of [`Sql::values`].
pub struct Tuple<'s, 'q> {
    sql: &'s mut Sql<'q>,
    first: bool,
}

impl<'q> Tuple<'_, 'q> {
    /// Binds the tuple's next value.
    pub fn bind<T>(&mut self, value: T) -> &mut Self
    where
        T: 'q + Encode<'q, Any> + Type<Any>,
    {
        if !std::mem::take(&mut self.first) {
            self.sql.text.push_str(", ");
        }
        self.sql.bind(value);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(backend: Backend) -> String {
        let mut sql = Sql::new(backend, "INSERT INTO t (a, b) ");
        sql.values([(1_i64, "x"), (2, "y")], |row, (a, b)| {
            row.bind(a).bind(b.to_string());
        });
        sql.push(" WHERE c = ").bind(3_i64);
        sql.text().to_string()
    }

    #[test]
    fn placeholders_are_numbered_across_pushes_and_tuples_for_postgres() {
        assert_eq!(statement(Backend::Postgres), "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) WHERE c = $5");
    }

    #[test]
    fn padded_values_have_one_text_per_multiple_of_the_padding() {
        let text = |rows: usize| {
            let mut sql = Sql::new(Backend::Sqlite, "INSERT INTO t (a, b) ");
            sql.padded_values(2, (0..rows).map(|i| i as i64), |row, a| {
                row.bind(a).bind(a);
            });
            sql.text().to_string()
        };
        assert_eq!(text(1), text(PAD_ROWS));
        assert_eq!(text(0), text(PAD_ROWS), "no rows still makes a valid statement");
        assert_ne!(text(PAD_ROWS), text(PAD_ROWS + 1));
        assert_eq!(text(PAD_ROWS + 1), text(2 * PAD_ROWS));
        let two = text(2);
        assert!(two.starts_with("INSERT INTO t (a, b) SELECT * FROM (VALUES (?, ?), (?, ?), (?, ?), "), "{two}");
        assert!(two.ends_with("(?, ?)) WHERE column1 IS NOT NULL"), "{two}");
    }

    #[test]
    fn placeholders_are_plain_for_sqlite() {
        assert_eq!(statement(Backend::Sqlite), "INSERT INTO t (a, b) VALUES (?, ?), (?, ?) WHERE c = ?");
    }
}
