//! AgentService: what an agent may do — add chunks, commit snapshots of itself, list and read
//! its own snapshots. Nothing here deletes or overwrites.

use bytes::Bytes;
use lifeboat_common::clock::now_unix_ms;
use lifeboat_proto::v1 as pb;
use lifeboat_proto::v1::agent_service_server::AgentService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{State, reads};
use crate::auth::{AgentCtx, require_agent};
use crate::catalog::chunks::{self, SessionRow};
use crate::catalog::failures::{self, FailureRow};
use crate::catalog::grants;
use crate::catalog::snapshots::{self, Lookup};
use crate::error::ServiceError;
use crate::wire::{self, HaveChunks, SessionId};
use crate::{MAX_IDS, MAX_MESSAGE_BYTES, VERSION, commit, ingest};

/// The AgentService implementation.
#[derive(Clone, Debug)]
pub struct AgentApi {
    state: State,
}

impl AgentApi {
    pub fn new(state: State) -> Self {
        AgentApi { state }
    }

    async fn agent<T>(&self, req: &Request<T>) -> Result<AgentCtx, Status> {
        Ok(require_agent(&self.state.catalog, req).await?)
    }
}

/// Resolves a snapshot selector within the caller's own snapshots (or all, for admins).
pub async fn find_snapshot(
    state: &State,
    agent: Option<String>,
    id: &str,
    source: &str,
) -> Result<pb::Snapshot, ServiceError> {
    let sel = wire::selector(id, source)?;
    let sel2 = sel.clone();
    let found = state
        .catalog
        .run(move |c| snapshots::find(c, agent.as_deref(), &sel2))
        .await?;
    match found {
        Lookup::Found(row) => Ok(wire::snapshot_to_pb(&row)),
        Lookup::NotFound => Err(ServiceError::NotFound(match sel {
            snapshots::Selector::Latest { source } => {
                format!("no snapshot of source {source:?} yet")
            }
            snapshots::Selector::IdOrPrefix(p) => format!("no snapshot matches {p:?}"),
        })),
        Lookup::Ambiguous(ids) => Err(ServiceError::invalid(format!(
            "snapshot prefix {id:?} is ambiguous; it matches {}; give more characters",
            ids.join(", ")
        ))),
    }
}

/// Whose snapshots a read names: the caller's own (`from_agent` empty or the caller), or another
/// agent's when an admin granted it (`lifeboatctl agent allow-restore`). Returns (agent, group).
pub async fn read_owner(
    state: &State,
    caller: &AgentCtx,
    from_agent: &str,
) -> Result<(String, String), ServiceError> {
    let me = caller.id.to_string();
    if from_agent.is_empty() || from_agent == me {
        return Ok((me, caller.group.clone()));
    }
    let other = lifeboat_common::ids::AgentId::new(from_agent)
        .map_err(|e| ServiceError::invalid(format!("from_agent: {e}")))?
        .to_string();
    let (me2, other2) = (me.clone(), other.clone());
    let (allowed, group) = state
        .catalog
        .run(move |c| {
            Ok((
                grants::allowed(c, &me2, &other2)?,
                grants::group_of(c, &other2)?,
            ))
        })
        .await?;
    match (allowed, group) {
        (true, Some(g)) => Ok((other, g)),
        _ => Err(ServiceError::FailedPrecondition(format!(
            "agent {me} may not read the snapshots of agent {other}; an operator can allow it with `lifeboatctl agent allow-restore {me} --from {other}`"
        ))),
    }
}

/// Adds a committed snapshot to the `/metrics` counters (a catalog error only skips counting).
async fn count_commit(s: &State, snapshot_id: &str) {
    let sel = snapshots::Selector::IdOrPrefix(snapshot_id.to_owned());
    match s.catalog.run(move |c| snapshots::find(c, None, &sel)).await {
        Ok(snapshots::Lookup::Found(row)) => s.counters.add(
            &row.agent,
            &row.source,
            row.stats.logical_bytes,
            row.stats.new_logical_bytes,
        ),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(snapshot = snapshot_id, error = %e, "snapshot not counted in /metrics")
        }
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let a = self.agent(&req).await?;
        Ok(Response::new(pb::WhoAmIResponse {
            agent_id: a.id.to_string(),
            dedup_group: a.group,
            controller_version: VERSION.to_owned(),
        }))
    }

    async fn begin_session(
        &self,
        req: Request<pb::BeginSessionRequest>,
    ) -> Result<Response<pb::BeginSessionResponse>, Status> {
        let a = self.agent(&req).await?;
        let source = wire::source(&req.get_ref().source)?;
        let row = SessionRow {
            id: SessionId::generate().as_str().to_owned(),
            agent: a.id.to_string(),
            source,
            started_at: now_unix_ms(),
            stored_bytes: 0,
            stored_chunks: 0,
        };
        let id = row.id.clone();
        self.state
            .catalog
            .run(move |c| chunks::create_session(c, &row))
            .await
            .map_err(ServiceError::from)?;
        tracing::info!(agent = %a.id, session = %id, "upload session opened");
        Ok(Response::new(pb::BeginSessionResponse {
            session_id: id,
            max_ids_per_request: MAX_IDS as u32,
            max_message_bytes: MAX_MESSAGE_BYTES as u64,
        }))
    }

    async fn have_chunks(
        &self,
        req: Request<pb::HaveChunksRequest>,
    ) -> Result<Response<pb::HaveChunksResponse>, Status> {
        let a = self.agent(&req).await?;
        let r = HaveChunks::try_from(req.into_inner())?;
        let session = ingest::owned_session(&self.state.catalog, &a, &r.session).await?;
        // The answer pins what it says the session has (garbage collection, crate::gc::pins).
        let missing = crate::gc::pins::answer_have(
            &self.state.catalog,
            &self.state.store,
            &session.id,
            &a.group,
            r.ids,
            self.state.gc.lease,
        )
        .await
        .map_err(|e| match e {
            crate::gc::pins::PinError::Catalog(e) => ServiceError::from(e),
            crate::gc::pins::PinError::Store(e) => ServiceError::from(e),
        })?;
        Ok(Response::new(pb::HaveChunksResponse {
            missing: missing
                .iter()
                .map(|i| Bytes::copy_from_slice(i.as_bytes()))
                .collect(),
        }))
    }

    async fn upload_chunks(
        &self,
        req: Request<Streaming<pb::UploadChunksRequest>>,
    ) -> Result<Response<pb::UploadChunksResponse>, Status> {
        let a = self.agent(&req).await?;
        let s = &self.state;
        let _open = s.streams.open(a.id.as_str(), "UploadChunks")?;
        let r = ingest::upload(
            &s.catalog,
            &s.store,
            (s.store_deadline, s.gc.lease),
            &a,
            req.into_inner(),
        )
        .await?;
        Ok(Response::new(r))
    }

    async fn commit_snapshot(
        &self,
        req: Request<Streaming<pb::CommitSnapshotRequest>>,
    ) -> Result<Response<pb::CommitSnapshotResponse>, Status> {
        let a = self.agent(&req).await?;
        let s = &self.state;
        let _open = s.streams.open(a.id.as_str(), "CommitSnapshot")?;
        let r =
            commit::commit(&s.catalog, &s.store, s.store_deadline, &a, req.into_inner()).await?;
        if !r.snapshot_id.is_empty() {
            count_commit(s, &r.snapshot_id).await;
        }
        Ok(Response::new(r))
    }

    async fn list_snapshots(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let a = self.agent(&req).await?;
        let source = match req.get_ref().source.as_str() {
            "" => None,
            s => Some(wire::source(s)?),
        };
        let (name, _) = read_owner(&self.state, &a, &req.get_ref().from_agent).await?;
        let rows = self
            .state
            .catalog
            .run(move |c| snapshots::list(c, Some(&name), source.as_deref()))
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::ListSnapshotsResponse {
            snapshots: rows.iter().map(wire::snapshot_to_pb).collect(),
            failures: Vec::new(),
        }))
    }

    async fn get_snapshot(
        &self,
        req: Request<pb::GetSnapshotRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        let a = self.agent(&req).await?;
        let r = req.get_ref();
        let (owner, _) = read_owner(&self.state, &a, &r.from_agent).await?;
        let s = find_snapshot(&self.state, Some(owner), &r.snapshot_id, &r.source).await?;
        Ok(Response::new(s))
    }

    type ReadChunksStream = reads::Batches<Result<pb::ReadChunksResponse, Status>>;

    async fn read_chunks(
        &self,
        req: Request<pb::ReadChunksRequest>,
    ) -> Result<Response<Self::ReadChunksStream>, Status> {
        let a = self.agent(&req).await?;
        let ids = wire::ids(&req.get_ref().ids, "ids")?;
        let owner = read_owner(&self.state, &a, &req.get_ref().from_agent).await?;
        let region = crate::replication::fallback::region(&self.state, req.get_ref().region)?;
        let group = owner.1.clone();
        let check = !req.get_ref().caller_verifies;
        let plan = reads::authorize(&self.state, owner, ids).await?;
        // One window queued at most: memory stays bounded whatever the request size.
        let (tx, rx) = mpsc::channel(1);
        let state = self.state.clone();
        tokio::spawn(reads::stream(state, group, plan, region, check, tx));
        Ok(Response::new(reads::Batches::new(rx)))
    }

    async fn report_failure(
        &self,
        req: Request<pb::ReportFailureRequest>,
    ) -> Result<Response<pb::ReportFailureResponse>, Status> {
        let a = self.agent(&req).await?;
        let r = req.into_inner();
        let source = wire::source(&r.source)?;
        if r.reason.trim().is_empty() {
            return Err(ServiceError::invalid("reason: empty; say why the backup failed").into());
        }
        let row = FailureRow {
            id: SessionId::generate().as_str()[..20].to_owned(),
            agent: a.id.to_string(),
            source,
            started_at: r.started_at_unix_ms,
            finished_at: r.finished_at_unix_ms,
            reported_at: now_unix_ms(),
            reason: failures::truncate_reason(&r.reason),
        };
        let (id, source) = (row.id.clone(), row.source.clone());
        self.state
            .catalog
            .run(move |c| failures::insert(c, &row))
            .await
            .map_err(ServiceError::from)?;
        tracing::warn!(agent = %a.id, source = %source, failure = %id, "agent reported a failed backup");
        Ok(Response::new(pb::ReportFailureResponse { failure_id: id }))
    }

    async fn renew_certificate(
        &self,
        req: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::RenewCertificateResponse>, Status> {
        let a = self.agent(&req).await?;
        Ok(Response::new(
            crate::enrollment::renew(&self.state, &a, req.into_inner()).await?,
        ))
    }

    async fn get_key_escrow(
        &self,
        req: Request<pb::GetKeyEscrowRequest>,
    ) -> Result<Response<pb::KeyEscrow>, Status> {
        let a = self.agent(&req).await?;
        let kind = req.into_inner().kind;
        if kind != "master" && !kind.is_empty() {
            return Err(Status::permission_denied(format!(
                "agents may read only the master key escrow, not {kind:?}"
            )));
        }
        let kind = lifeboat_common::escrow::EscrowKind::Master;
        let found = crate::escrow::newest_in_either(
            &self.state.store,
            self.state.secondary.as_ref(),
            kind,
        )
            .await
            .map_err(crate::error::ServiceError::from)?
            .ok_or_else(|| {
                Status::not_found(
                    "no master key escrow is stored: on a host that has the master key, run `lifeboatctl key escrow --key FILE` (or `key init` with escrow), then retry",
                )
            })?;
        tracing::info!(agent = %a.id, key = %found.object_key, "master key escrow handed out");
        Ok(Response::new(pb::KeyEscrow {
            kind: kind.as_str().to_owned(),
            envelope: found.envelope,
            created_at_unix_ms: found.created_at_unix_ms,
            object_key: found.object_key,
        }))
    }

    type ControlStream = ReceiverStream<Result<pb::ControllerCommand, Status>>;

    async fn control(
        &self,
        req: Request<tonic::Streaming<pb::AgentEvent>>,
    ) -> Result<Response<Self::ControlStream>, Status> {
        let a = self.agent(&req).await?;
        let s =
            crate::fleet::control::stream::open(self.state.clone(), a, req.into_inner()).await?;
        Ok(Response::new(s))
    }
}
