//! A statement built at run time, with the placeholders each database wants: `$N` for
//! PostgreSQL (sqlx's own `QueryBuilder` writes `?` for the `Any` driver, which PostgreSQL
//! refuses), plain `?` for SQLite (which finds a `$N` parameter by walking its list of names,
//! so binding the thousands of arguments of a group commit that way takes quadratic time).

use std::fmt::Write as _;

use sqlx::any::{AnyArguments, AnyQueryResult, AnyRow};
use sqlx::{Any, Arguments, Encode, Type};

use crate::{Backend, StoreError};

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
    fn placeholders_are_plain_for_sqlite() {
        assert_eq!(statement(Backend::Sqlite), "INSERT INTO t (a, b) VALUES (?, ?), (?, ?) WHERE c = ?");
    }
}
