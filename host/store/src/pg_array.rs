//! PostgreSQL array literals (`{"a","b",NULL}`), for a whole column of a batch bound as one text
//! parameter and cast in the statement (`unnest($1::text[], $2::bigint[])`).
//!
//! sqlx's `Any` driver binds no arrays, and a multi-row `VALUES` list gives every batch size a
//! statement text of its own: PostgreSQL parses and plans each one anew, and the driver spends
//! a round trip preparing it. With one parameter per column the text is the same whatever the
//! batch, so the connection keeps it prepared, and the statement runs in one round trip.
//!
//! Every text element is double-quoted with `"` and `\` escaped by a backslash, which is how
//! PostgreSQL's array input reads any string (commas, braces, the word `NULL`, non-ASCII); an
//! unquoted `NULL` is a null element.

use std::fmt::{self, Display, Write as _};

use crate::sql::Sql;

/// One column of a batch as an array literal, with the cast that reads it.
pub(crate) struct Column {
    literal: String,
    cast: &'static str,
}

/// A `text[]` column of `values` (`None` for a null element).
pub(crate) fn texts<T: Display>(values: impl IntoIterator<Item = Option<T>>) -> Column {
    Column { literal: text_array(values), cast: "::text[]" }
}

/// A `bigint[]` column of `values`.
pub(crate) fn ints(values: impl IntoIterator<Item = i64>) -> Column {
    Column { literal: int_array(values), cast: "::bigint[]" }
}

impl Sql<'_> {
    /// Appends a placeholder bound to `column`'s literal, cast to its array type.
    pub(crate) fn array(&mut self, column: Column) -> &mut Self {
        self.bind(column.literal).push(column.cast)
    }

    /// Appends `unnest(<array>, ...)` of `columns`, in order.
    pub(crate) fn unnest(&mut self, columns: impl IntoIterator<Item = Column>) -> &mut Self {
        self.push("unnest(");
        for (i, column) in columns.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.array(column);
        }
        self.push(")")
    }
}

/// A `text[]` literal of `values` (`None` for a null element).
fn text_array<T: Display>(values: impl IntoIterator<Item = Option<T>>) -> String {
    let mut literal = String::from("{");
    for (i, value) in values.into_iter().enumerate() {
        if i > 0 {
            literal.push(',');
        }
        match value {
            None => literal.push_str("NULL"),
            Some(value) => {
                literal.push('"');
                // Writing into a `String` cannot fail.
                let _ = write!(Escaped(&mut literal), "{value}");
                literal.push('"');
            }
        }
    }
    literal.push('}');
    literal
}

/// A `bigint[]` literal of `values`.
fn int_array(values: impl IntoIterator<Item = i64>) -> String {
    let mut literal = String::from("{");
    for (i, value) in values.into_iter().enumerate() {
        if i > 0 {
            literal.push(',');
        }
        let _ = write!(literal, "{value}");
    }
    literal.push('}');
    literal
}

/// Writes through to a string, escaping what ends or escapes a quoted array element.
struct Escaped<'a>(&'a mut String);

impl fmt::Write for Escaped<'_> {
    /// Copies the runs between the characters to escape whole. An outbox payload is JSON, a
    /// couple of hundred bytes with a quote every few; this takes about a fifth less time for
    /// one than pushing it a character at a time (docs/09-performance.md).
    fn write_str(&mut self, mut text: &str) -> fmt::Result {
        while let Some(at) = text.find(['"', '\\']) {
            let (run, rest) = text.split_at(at);
            self.0.push_str(run);
            self.0.push('\\');
            self.0.push_str(&rest[..1]);
            text = &rest[1..];
        }
        self.0.push_str(text);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_elements_are_quoted_escaped_and_nulls_are_bare() {
        let literal = text_array([Some("a,b"), Some(r#"q"x\y"#), None, Some("NULL"), Some("{}"), Some("é")]);
        assert_eq!(literal, r#"{"a,b","q\"x\\y",NULL,"NULL","{}","é"}"#);
    }

    #[test]
    fn escapes_at_either_end_and_side_by_side_are_each_escaped() {
        let literal = text_array([Some(r#""\""#), Some(r#"{"a":"é\"}"#), Some("")]);
        assert_eq!(literal, r#"{"\"\\\"","{\"a\":\"é\\\"}",""}"#);
    }

    #[test]
    fn empty_arrays_are_braces() {
        assert_eq!(text_array(std::iter::empty::<Option<&str>>()), "{}");
        assert_eq!(int_array([]), "{}");
    }

    #[test]
    fn integers_are_written_as_they_are() {
        assert_eq!(int_array([1, -2, i64::MAX, i64::MIN]), format!("{{1,-2,{},{}}}", i64::MAX, i64::MIN));
    }

    #[test]
    fn unnest_binds_each_column_once_with_its_cast() {
        let mut sql = Sql::new(crate::Backend::Postgres, "SELECT * FROM ");
        sql.unnest([texts([Some("a")]), ints([1])]);
        assert_eq!(sql.text(), "SELECT * FROM unnest($1::text[], $2::bigint[])");
    }

    #[test]
    fn any_display_value_is_written_escaped() {
        let id = uuid::Uuid::nil();
        assert_eq!(text_array([Some(id)]), format!("{{\"{id}\"}}"));
    }
}
