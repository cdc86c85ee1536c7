//! The chunk epoch: a counter on the catalog's writer connection that moves whenever a chunk
//! row is deleted or condemned, so a caller that checked ids earlier can tell, in a later
//! transaction, whether any chunk may have gone since (CommitSnapshot: [`crate::gc::pins::Checked`]).
//!
//! It is a TEMP table bumped by TEMP triggers ([`install`]): per connection, never written to
//! the database file, so the catalog's format does not change and every writer of chunk rows
//! (GC's condemn and sweep, HaveChunks dropping the rows of a pack found gone, code not written
//! yet) moves it without knowing it exists. It starts at 0 each time the connection opens.
//!
//! Invariant: two reads on the writer connection that return the same value saw no chunk row
//! deleted or condemned in between. It holds because every write of the serving controller
//! goes through that one connection (`Catalog::run`); the read-only connections
//! (`catalog::readers`) never write, and the offline commands (`rebuild-catalog`, tests'
//! helpers) run while no controller serves the catalog. A trigger's update is part of the
//! writing transaction: a rolled-back sweep moves nothing.

use rusqlite::Connection;

use super::CatalogError;

/// Creates the counter and its triggers on `conn` (call once per connection, after the schema
/// is migrated).
pub fn install(conn: &Connection) -> Result<(), CatalogError> {
    conn.execute_batch(
        "CREATE TEMP TABLE chunk_epoch (n INTEGER NOT NULL);
         INSERT INTO chunk_epoch (n) VALUES (0);
         CREATE TEMP TRIGGER chunk_epoch_on_delete AFTER DELETE ON main.chunks
         BEGIN UPDATE chunk_epoch SET n = n + 1; END;
         CREATE TEMP TRIGGER chunk_epoch_on_condemn AFTER UPDATE OF condemned_at ON main.chunks
         WHEN NEW.condemned_at IS NOT NULL
         BEGIN UPDATE chunk_epoch SET n = n + 1; END;",
    )?;
    Ok(())
}

/// The epoch now, as `conn` (the writer, inside or outside a transaction) sees it.
pub fn current(conn: &Connection) -> Result<i64, CatalogError> {
    Ok(conn
        .prepare_cached("SELECT n FROM temp.chunk_epoch")?
        .query_row([], |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    /// Deleting or condemning a chunk row moves the epoch; adding, reviving or a rolled-back
    /// delete does not.
    #[test]
    fn only_deleted_or_condemned_chunks_move_the_epoch() {
        let cat = Catalog::open_in_memory().expect("catalog");
        cat.run_blocking(|c| {
            c.execute_batch(
                "INSERT INTO packs (id, key, size, entries, created_at) VALUES (x'01', 'k', 1, 2, 0);
                 INSERT INTO chunks (dedup_group, id, pack_id, offset, length, blob_hash, created_at)
                 VALUES ('g', x'aa', x'01', 0, 1, x'00', 0), ('g', x'bb', x'01', 1, 1, x'00', 0);",
            )?;
            let e0 = current(c)?;
            c.execute("UPDATE chunks SET condemned_at = NULL WHERE id = x'aa'", [])?;
            assert_eq!(current(c)?, e0, "a revive is not a loss");
            c.execute("UPDATE chunks SET condemned_at = 5 WHERE id = x'aa'", [])?;
            let e1 = current(c)?;
            assert!(e1 > e0, "a condemned chunk moves the epoch");
            let tx = c.transaction()?;
            tx.execute("DELETE FROM chunks WHERE id = x'bb'", [])?;
            assert!(current(&tx)? > e1);
            tx.rollback()?;
            assert_eq!(current(c)?, e1, "a rolled-back delete moves nothing");
            c.execute("DELETE FROM chunks WHERE id = x'bb'", [])?;
            assert!(current(c)? > e1, "a deleted chunk moves the epoch");
            Ok(())
        })
        .expect("run");
    }
}
