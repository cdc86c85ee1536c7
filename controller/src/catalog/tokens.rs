//! Join tokens: stored by the SHA-256 of their secret, never in clear; every use is recorded.
//!
//! [`redeem`] checks and consumes one use in the caller's transaction, so two agents racing
//! for the last use of a token cannot both win (the catalog has one writer).

use rusqlite::{Connection, OptionalExtension, params};

use super::CatalogError;

/// A token as created by an admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub secret_sha256: String,
    /// The agent the token enrolls; `None`: the agent chooses (within `name_prefix`).
    pub agent: Option<String>,
    pub name_prefix: String,
    pub dedup_group: Option<String>,
    pub uses_left: u32,
    pub expires_at: i64,
    pub created_at: i64,
}

/// Why a token cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Unknown,
    Expired,
    Used,
}

pub fn insert(conn: &Connection, t: &TokenRow) -> Result<(), CatalogError> {
    conn.execute(
        "INSERT INTO join_tokens (secret_sha256, agent, name_prefix, dedup_group, uses_left,
                                  expires_at, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            t.secret_sha256,
            t.agent,
            t.name_prefix,
            t.dedup_group,
            t.uses_left,
            t.expires_at,
            t.created_at
        ],
    )?;
    Ok(())
}

/// Looks a token up and checks it is usable at `now` (does not consume it).
pub fn check(
    conn: &Connection,
    hash: &str,
    now: i64,
) -> Result<Result<TokenRow, Refusal>, CatalogError> {
    let row = conn
        .query_row(
            "SELECT secret_sha256, agent, name_prefix, dedup_group, uses_left, expires_at, created_at
             FROM join_tokens WHERE secret_sha256 = ?1",
            [hash],
            |r| {
                Ok(TokenRow {
                    secret_sha256: r.get(0)?,
                    agent: r.get(1)?,
                    name_prefix: r.get(2)?,
                    dedup_group: r.get(3)?,
                    uses_left: r.get(4)?,
                    expires_at: r.get(5)?,
                    created_at: r.get(6)?,
                })
            },
        )
        .optional()?;
    Ok(match row {
        None => Err(Refusal::Unknown),
        Some(t) if t.uses_left == 0 => Err(Refusal::Used),
        Some(t) if t.expires_at <= now => Err(Refusal::Expired),
        Some(t) => Ok(t),
    })
}

/// Consumes one use of a token and records who used it.
pub fn consume(
    conn: &Connection,
    hash: &str,
    agent: &str,
    peer: &str,
    now: i64,
) -> Result<(), CatalogError> {
    conn.execute(
        "UPDATE join_tokens SET uses_left = uses_left - 1 WHERE secret_sha256 = ?1 AND uses_left > 0",
        [hash],
    )?;
    conn.execute(
        "INSERT INTO join_token_uses (secret_sha256, agent, peer, used_at) VALUES (?1, ?2, ?3, ?4)",
        params![hash, agent, peer, now],
    )?;
    Ok(())
}

/// How many times a token was used (for tests and audits).
pub fn uses(conn: &Connection, hash: &str) -> Result<u64, CatalogError> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM join_token_uses WHERE secret_sha256 = ?1",
        [hash],
        |r| r.get(0),
    )?;
    Ok(super::to_u64(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    #[test]
    fn tokens_expire_and_run_out() {
        let cat = Catalog::open_in_memory().expect("open");
        cat.run_blocking(|c| {
            let t = TokenRow {
                secret_sha256: "h".into(),
                agent: None,
                name_prefix: "web-".into(),
                dedup_group: None,
                uses_left: 1,
                expires_at: 100,
                created_at: 0,
            };
            insert(c, &t)?;
            assert_eq!(check(c, "h", 50)?, Ok(t.clone()));
            assert_eq!(check(c, "h", 100)?, Err(Refusal::Expired));
            assert_eq!(check(c, "x", 50)?, Err(Refusal::Unknown));
            consume(c, "h", "web-1", "127.0.0.1", 60)?;
            assert_eq!(check(c, "h", 61)?, Err(Refusal::Used));
            assert_eq!(uses(c, "h")?, 1);
            Ok(())
        })
        .expect("ops");
    }
}
