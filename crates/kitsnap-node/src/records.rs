//! Records kept as JSON values in redb tables keyed by name: the snapshotter's ModelKit
//! records and the node's mounts and Docker volumes. One typed table helper instead of
//! read/insert/remove written out per table.

use std::marker::PhantomData;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("metadata database")]
    Db(#[from] redb::Error),
    #[error("record {key:?} in table {table}")]
    Json {
        table: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(impl From<$t> for RecordError {
        fn from(e: $t) -> Self { RecordError::Db(e.into()) }
    })*};
}
redb_from!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A table of `T`, stored as JSON under string keys.
pub struct JsonTable<T> {
    name: &'static str,
    _t: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> JsonTable<T> {
    pub const fn new(name: &'static str) -> Self {
        JsonTable {
            name,
            _t: PhantomData,
        }
    }

    fn def(&self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(self.name)
    }

    /// Creates the table if the database does not have it yet.
    pub fn create(&self, db: &Database) -> Result<(), RecordError> {
        let w = db.begin_write()?;
        w.open_table(self.def())?;
        w.commit()?;
        Ok(())
    }

    fn decode(&self, key: &str, v: &[u8]) -> Result<T, RecordError> {
        serde_json::from_slice(v).map_err(|source| RecordError::Json {
            table: self.name,
            key: key.to_string(),
            source,
        })
    }

    pub fn get(&self, db: &Database, key: &str) -> Result<Option<T>, RecordError> {
        let r = db.begin_read()?;
        let t = r.open_table(self.def())?;
        let v = t.get(key)?;
        v.map(|v| self.decode(key, v.value())).transpose()
    }

    pub fn all(&self, db: &Database) -> Result<Vec<T>, RecordError> {
        let r = db.begin_read()?;
        let t = r.open_table(self.def())?;
        let mut out = Vec::new();
        for e in t.iter()? {
            let (k, v) = e?;
            out.push(self.decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    pub fn put(&self, db: &Database, key: &str, value: &T) -> Result<(), RecordError> {
        let b = serde_json::to_vec(value).map_err(|source| RecordError::Json {
            table: self.name,
            key: key.to_string(),
            source,
        })?;
        let w = db.begin_write()?;
        w.open_table(self.def())?.insert(key, b.as_slice())?;
        w.commit()?;
        Ok(())
    }

    pub fn remove(&self, db: &Database, key: &str) -> Result<(), RecordError> {
        let w = db.begin_write()?;
        w.open_table(self.def())?.remove(key)?;
        w.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_all_remove() {
        let d = tempfile::tempdir().unwrap();
        let db = Database::create(d.path().join("t.redb")).unwrap();
        let t: JsonTable<Vec<u32>> = JsonTable::new("t");
        t.create(&db).unwrap();
        t.put(&db, "a", &vec![1, 2]).unwrap();
        t.put(&db, "b", &vec![3]).unwrap();
        assert_eq!(t.get(&db, "a").unwrap(), Some(vec![1, 2]));
        assert_eq!(t.all(&db).unwrap(), vec![vec![1, 2], vec![3]]);
        t.remove(&db, "a").unwrap();
        assert_eq!(t.get(&db, "a").unwrap(), None);
        let raw: TableDefinition<&str, &[u8]> = TableDefinition::new("t");
        let w = db.begin_write().unwrap();
        w.open_table(raw)
            .unwrap()
            .insert("bad", b"{".as_slice())
            .unwrap();
        w.commit().unwrap();
        let e = t.all(&db).unwrap_err();
        assert!(matches!(e, RecordError::Json { key, .. } if key == "bad"));
    }
}
