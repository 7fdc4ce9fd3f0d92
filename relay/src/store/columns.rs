//! A stored row as both backends read it: each backend's row type gives its columns by position
//! ([`Columns`]), and one decoder per record ([`RowReader`]) turns them into the relay's types, so
//! SQLite and PostgreSQL cannot drift apart in how a job or a request is read back.

use super::StoreError;

/// The columns of one row, by position, `None` where the column is NULL. A column of another type
/// than asked is a database error (the query and the decoder disagree).
pub(crate) trait Columns {
    /// A text column.
    fn text(&self, i: usize) -> Result<Option<String>, StoreError>;
    /// An integer column, whatever its width.
    fn int(&self, i: usize) -> Result<Option<i64>, StoreError>;
    /// A boolean column (on SQLite an integer, 0 or 1).
    fn flag(&self, i: usize) -> Result<Option<bool>, StoreError>;
    /// A binary column.
    fn bytes(&self, i: usize) -> Result<Option<Vec<u8>>, StoreError>;
}

/// Reads one record's columns; a value that does not parse, or a NULL where the schema has none,
/// is [`StoreError::Corrupt`] naming the record and the column.
pub(crate) struct RowReader<'r, R: ?Sized> {
    row: &'r R,
    id: String,
}

impl<'r, R: Columns + ?Sized> RowReader<'r, R> {
    /// A reader of `row`, whose record is named by its text column `id_column`.
    pub(crate) fn new(row: &'r R, id_column: usize) -> Result<Self, StoreError> {
        let id = row
            .text(id_column)?
            .ok_or_else(|| StoreError::Corrupt { id: "(no id)".into(), reason: "missing id".into() })?;
        Ok(RowReader { row, id })
    }

    /// The record's id, as stored.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The error for a value of this record that does not parse.
    pub(crate) fn corrupt(&self, reason: &str) -> StoreError {
        StoreError::Corrupt { id: self.id.clone(), reason: reason.to_owned() }
    }

    fn required<T>(&self, value: Option<T>, what: &str) -> Result<T, StoreError> {
        value.ok_or_else(|| self.corrupt(&format!("missing {what}")))
    }

    /// A text column that is never NULL.
    pub(crate) fn text(&self, i: usize, what: &str) -> Result<String, StoreError> {
        self.required(self.row.text(i)?, what)
    }

    /// A text column that may be NULL.
    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        self.row.text(i)
    }

    /// A text column that is never NULL, parsed by `parse`.
    pub(crate) fn parsed<T>(
        &self,
        i: usize,
        what: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, StoreError> {
        parse(&self.text(i, what)?).ok_or_else(|| self.corrupt(&format!("bad {what}")))
    }

    /// A text column that may be NULL, parsed by `parse` when it is not.
    pub(crate) fn opt_parsed<T>(
        &self,
        i: usize,
        what: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, StoreError> {
        self.opt_text(i)?.map(|text| parse(&text).ok_or_else(|| self.corrupt(&format!("bad {what}")))).transpose()
    }

    /// A JSON text column that may be NULL.
    pub(crate) fn opt_json<T: serde::de::DeserializeOwned>(
        &self,
        i: usize,
        what: &str,
    ) -> Result<Option<T>, StoreError> {
        self.opt_parsed(i, what, |text| serde_json::from_str(text).ok())
    }

    /// An integer column that is never NULL.
    pub(crate) fn int(&self, i: usize, what: &str) -> Result<i64, StoreError> {
        self.required(self.row.int(i)?, what)
    }

    /// An integer column that may be NULL.
    pub(crate) fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        self.row.int(i)
    }

    /// A count (an integer from 0 to `u32::MAX`) that may be NULL.
    pub(crate) fn opt_count(&self, i: usize, what: &str) -> Result<Option<u32>, StoreError> {
        self.row.int(i)?.map(|n| u32::try_from(n).map_err(|_| self.corrupt(&format!("bad {what}")))).transpose()
    }

    /// A count (an integer from 0 to `u32::MAX`) that is never NULL.
    pub(crate) fn count(&self, i: usize, what: &str) -> Result<u32, StoreError> {
        let count = self.opt_count(i, what)?;
        self.required(count, what)
    }

    /// A boolean column that is never NULL.
    pub(crate) fn flag(&self, i: usize, what: &str) -> Result<bool, StoreError> {
        self.required(self.row.flag(i)?, what)
    }

    /// A boolean column that may be NULL.
    pub(crate) fn opt_flag(&self, i: usize) -> Result<Option<bool>, StoreError> {
        self.row.flag(i)
    }

    /// A binary column that may be NULL.
    pub(crate) fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>, StoreError> {
        self.row.bytes(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row of text and integer columns, NULL where `None`.
    enum Value {
        Text(Option<&'static str>),
        Int(Option<i64>),
    }

    struct FakeRow(Vec<Value>);

    impl Columns for FakeRow {
        fn text(&self, i: usize) -> Result<Option<String>, StoreError> {
            match self.0.get(i) {
                Some(Value::Text(text)) => Ok(text.map(str::to_owned)),
                _ => Err(StoreError::Database(format!("column {i} is not text"))),
            }
        }
        fn int(&self, i: usize) -> Result<Option<i64>, StoreError> {
            match self.0.get(i) {
                Some(Value::Int(n)) => Ok(*n),
                _ => Err(StoreError::Database(format!("column {i} is not an integer"))),
            }
        }
        fn flag(&self, i: usize) -> Result<Option<bool>, StoreError> {
            Ok(self.int(i)?.map(|n| n != 0))
        }
        fn bytes(&self, i: usize) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(self.text(i)?.map(String::into_bytes))
        }
    }

    fn reason(result: Result<impl std::fmt::Debug, StoreError>) -> (String, String) {
        match result {
            Err(StoreError::Corrupt { id, reason }) => (id, reason),
            other => panic!("expected a corrupt record, got {other:?}"),
        }
    }

    #[test]
    fn values_that_do_not_fit_name_the_record_and_the_column() {
        let row = FakeRow(vec![
            Value::Text(Some("job-1")),
            Value::Text(None),
            Value::Int(Some(-1)),
            Value::Text(Some("nonsense")),
            Value::Int(Some(7)),
        ]);
        let r = RowReader::new(&row, 0).expect("reader");
        assert_eq!(reason(r.text(1, "client")), ("job-1".into(), "missing client".into()));
        assert_eq!(reason(r.count(2, "attempts")), ("job-1".into(), "bad attempts".into()));
        assert_eq!(reason(r.parsed(3, "state", |_| None::<u8>)), ("job-1".into(), "bad state".into()));
        assert_eq!(reason(r.opt_json::<Vec<String>>(3, "notes")), ("job-1".into(), "bad notes".into()));
        assert_eq!(r.opt_text(1).expect("NULL"), None);
        assert_eq!(r.count(4, "attempts").expect("count"), 7);
        assert!(r.flag(4, "verified").expect("flag"));
        assert!(
            matches!(r.text(4, "client"), Err(StoreError::Database(_))),
            "a column of another type is a database error"
        );
    }

    #[test]
    fn a_row_without_its_id_is_corrupt() {
        let row = FakeRow(vec![Value::Text(None)]);
        assert_eq!(reason(RowReader::new(&row, 0).map(|_| ())).1, "missing id");
    }
}
