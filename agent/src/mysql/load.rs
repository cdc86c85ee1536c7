//! One restore stream piped into the `mariadb`/`mysql` client: chunks are fetched in bounded
//! batches cut from the dump's chunk list as it is read (from the restore's scratch file for a
//! large dump, [`ChunkList`]), verified (AEAD + keyed hash) and written to the client's stdin in
//! order, so memory stays bounded whatever the dump size. The client's exit status and stderr
//! decide success; a client that dies early (broken pipe) stops the transfer and its stderr is
//! reported.

use std::io::Write;
use std::process::{ChildStdin, Stdio};

use lifeboat_common::ids::ChunkId;
use lifeboat_common::keys::DataKeys;
use lifeboat_common::manifest::{ChunkList, Entry};

use super::dump::describe_status;
use super::{MysqlError, Server, collect_stderr, tail};
use crate::error::AgentError;
use crate::remote::Remote;
use crate::restore::ahead::Batches;
use crate::restore::fetch::{BATCH_BYTES, BATCH_IDS, read_verified};

/// Pipes the dump in `entry` (its chunks in `list`) into the client, into `database` (none: the
/// users dump). Returns the bytes sent.
pub async fn load<R: Remote>(
    remote: &R,
    keys: &DataKeys,
    server: &Server,
    (entry, list): (&Entry, &ChunkList),
    database: Option<&str>,
) -> Result<u64, AgentError> {
    let tool = server.client.display().to_string();
    let mut cmd = server.command(&server.client);
    if let Some(db) = database {
        cmd.arg(db);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| MysqlError::Spawn {
            tool: tool.clone(),
            source,
        })?;
    let stderr = child.stderr.take().map(collect_stderr);
    let mut stdin = child.stdin.take();
    let what = format!("dump {}", entry.display_path());
    let mut sent = 0u64;
    let mut broken = None;
    let mut fetch_error = None;
    for batch in Batches::new(list, BATCH_IDS, BATCH_BYTES) {
        let Some(pipe) = stdin.take() else { break };
        let fetched = match batch {
            Ok(b) => read_verified(remote, keys, &b.ids, &what)
                .await
                .map(|p| (b.ids, p)),
            Err(e) => Err(e),
        };
        let (batch, plain) = match fetched {
            Ok(f) => f,
            Err(e) => {
                fetch_error = Some(e);
                break;
            }
        };
        let (pipe, n, err) = tokio::task::spawn_blocking(move || write_batch(pipe, &batch, plain))
            .await
            .map_err(|e| AgentError::Worker(e.to_string()))?;
        sent += n;
        if let Some(e) = err {
            broken = Some(e);
            break;
        }
        stdin = Some(pipe);
    }
    drop(stdin);
    if fetch_error.is_some() {
        let _ = child.kill();
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .map_err(|e| AgentError::Worker(e.to_string()))?
        .map_err(|source| MysqlError::Spawn {
            tool: tool.clone(),
            source,
        })?;
    let stderr = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
    if let Some(e) = fetch_error {
        return Err(e);
    }
    if !status.success() || broken.is_some() {
        return Err(MysqlError::Failed {
            tool,
            what: format!(
                "the load of {}{}",
                entry.display_path(),
                database
                    .map(|d| format!(" into database {d}"))
                    .unwrap_or_default()
            ),
            status: describe_status(&status),
            stderr: match broken {
                Some(b) => format!("{} (writing to it failed: {b})", tail(&stderr)),
                None => tail(&stderr),
            },
        }
        .into());
    }
    if sent != entry.size {
        return Err(AgentError::Invalid(format!(
            "sent {sent} bytes of {}, the manifest says {}",
            entry.display_path(),
            entry.size
        )));
    }
    Ok(sent)
}

fn write_batch(
    mut pipe: ChildStdin,
    ids: &[ChunkId],
    mut plain: std::collections::HashMap<ChunkId, Vec<u8>>,
) -> (ChildStdin, u64, Option<String>) {
    let mut n = 0u64;
    for (i, id) in ids.iter().enumerate() {
        let last_use = !ids[i + 1..].contains(id);
        let data = if last_use {
            plain.remove(id)
        } else {
            plain.get(id).cloned()
        };
        let Some(data) = data else {
            return (
                pipe,
                n,
                Some(format!("chunk {} was not returned", id.short())),
            );
        };
        if let Err(e) = pipe.write_all(&data) {
            return (pipe, n, Some(e.to_string()));
        }
        n += data.len() as u64;
    }
    (pipe, n, None)
}
