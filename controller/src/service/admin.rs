//! AdminService: enrollment (signing agent CSRs) and fleet-wide listings, for `lifeboatctl`.

use lifeboat_common::clock::now_unix_ms;
use lifeboat_common::ids::AgentId;
use lifeboat_proto::v1 as pb;
use lifeboat_proto::v1::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use super::State;
use super::agent::find_snapshot;
use crate::auth::{fingerprint, require_admin};
use crate::catalog::agents::{self, AgentRow};
use crate::catalog::{credentials, failures, grants, snapshots};
use crate::error::ServiceError;
use crate::wire;

/// The AdminService implementation.
#[derive(Clone, Debug)]
pub struct AdminApi {
    state: State,
}

impl AdminApi {
    pub fn new(state: State) -> Self {
        AdminApi { state }
    }
}

/// Signs the CSR and records the agent; an existing id is `AlreadyExists`.
pub async fn add_agent(
    state: &State,
    r: pb::AddAgentRequest,
) -> Result<pb::AddAgentResponse, ServiceError> {
    let id = AgentId::new(&r.agent_id).map_err(|e| ServiceError::invalid(e.to_string()))?;
    let group = if r.dedup_group.is_empty() {
        id.to_string()
    } else {
        AgentId::new(&r.dedup_group)
            .map_err(|_| {
                ServiceError::invalid(format!(
                    "invalid dedup group {:?}: use the same characters as an agent id",
                    r.dedup_group
                ))
            })?
            .to_string()
    };
    let issued = state
        .ca
        .sign_agent_csr(&r.csr_pem, &id)
        .map_err(|e| ServiceError::invalid(e.to_string()))?;
    let row = AgentRow {
        id: id.to_string(),
        dedup_group: group.clone(),
        cert_sha256: fingerprint(&issued.cert_der),
        not_after: issued.not_after_unix_ms,
        created_at: now_unix_ms(),
        last_seen: 0,
        snapshots: 0,
    };
    let event = crate::registry::Pending::agent(
        &row.id,
        row.created_at,
        crate::registry::Change::Added {
            group: group.clone(),
            cert_sha256: row.cert_sha256.clone(),
            not_after_unix_ms: row.not_after,
        },
    );
    let name = row.id.clone();
    let taken = state
        .catalog
        .run(move |c| Ok(grants::group_of(c, &name)?.is_some()))
        .await?;
    // Checked before the registry object is written, so a refused add leaves no event behind.
    let inserted = !taken
        && event
            .record(state, move |c| agents::insert(c, &row))
            .await?;
    if !inserted {
        return Err(ServiceError::AlreadyExists(format!(
            "agent {id} already exists; choose another name (replacing an agent's certificate is not supported yet)"
        )));
    }
    tracing::info!(agent = %id, group = %group, "agent enrolled");
    Ok(pb::AddAgentResponse {
        agent_id: id.to_string(),
        certificate_pem: issued.cert_pem,
        ca_pem: state.ca.cert_pem().to_owned(),
        not_after_unix_ms: issued.not_after_unix_ms,
    })
}

/// ListAgents' optional wait for one agent's connection state.
async fn wait_connected(
    control: &crate::fleet::control::Registry,
    r: &pb::ListAgentsRequest,
) -> Result<(), ServiceError> {
    if r.wait_agent.is_empty() {
        return Ok(());
    }
    let ms = if r.timeout_ms == 0 {
        60_000
    } else {
        r.timeout_ms
    };
    let wait = control.wait_connected(&r.wait_agent, r.wait_connected);
    tokio::time::timeout(std::time::Duration::from_millis(ms), wait)
        .await
        .map_err(|_| {
            ServiceError::DeadlineExceeded(format!(
                "agent {} is still {} after {ms} ms",
                r.wait_agent,
                if r.wait_connected {
                    "not connected"
                } else {
                    "connected"
                }
            ))
        })
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn add_agent(
        &self,
        req: Request<pb::AddAgentRequest>,
    ) -> Result<Response<pb::AddAgentResponse>, Status> {
        require_admin(&self.state.catalog, &req).await?;
        Ok(Response::new(
            add_agent(&self.state, req.into_inner()).await?,
        ))
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        require_admin(&self.state.catalog, &req).await?;
        wait_connected(&self.state.control, req.get_ref()).await?;
        let (rows, revoked) = self
            .state
            .catalog
            .run(|c| Ok((agents::list(c)?, credentials::revoked_agents(c)?)))
            .await
            .map_err(ServiceError::from)?;
        let control = &self.state.control;
        let agent = |a: &AgentRow| pb::Agent {
            revoked_at_unix_ms: revoked.get(&a.id).copied().unwrap_or(0),
            connected: control.live(&a.id).is_some(),
            version: control.version(&a.id),
            ..wire::agent_to_pb(a)
        };
        Ok(Response::new(pb::ListAgentsResponse {
            agents: rows.iter().map(agent).collect(),
        }))
    }

    async fn list_snapshots(
        &self,
        req: Request<pb::AdminListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        require_admin(&self.state.catalog, &req).await?;
        let r = req.into_inner();
        let agent = match r.agent_id.as_str() {
            "" => None,
            a => Some(
                AgentId::new(a)
                    .map_err(|e| ServiceError::invalid(e.to_string()))?
                    .to_string(),
            ),
        };
        let source = match r.source.as_str() {
            "" => None,
            s => Some(wire::source(s)?),
        };
        let (rows, failed) = self
            .state
            .catalog
            .run(move |c| {
                let rows = snapshots::list(c, agent.as_deref(), source.as_deref())?;
                let mut out = Vec::with_capacity(rows.len());
                for row in &rows {
                    let mut pb = wire::snapshot_to_pb(row);
                    pb.replicated =
                        crate::replication::queue::record_replicated(c, &row.record_key)?;
                    out.push(pb);
                }
                Ok((out, failures::list(c, agent.as_deref(), source.as_deref())?))
            })
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::ListSnapshotsResponse {
            snapshots: rows,
            failures: failed.iter().map(failure_to_pb).collect(),
        }))
    }

    async fn get_snapshot(
        &self,
        req: Request<pb::AdminGetSnapshotRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        require_admin(&self.state.catalog, &req).await?;
        let id = &req.get_ref().snapshot_id;
        if id == "latest" {
            return Err(ServiceError::invalid(
                "give a snapshot id or prefix (\"latest\" needs an agent; use `snapshots list --agent`)",
            )
            .into());
        }
        let mut snap = find_snapshot(&self.state, None, id, "").await?;
        let key = crate::record::record_key(&snap.agent_id, &snap.id);
        snap.replicated = self
            .state
            .catalog
            .run(move |c| crate::replication::queue::record_replicated(c, &key))
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(snap))
    }

    async fn replication_status(
        &self,
        req: Request<pb::ReplicationStatusRequest>,
    ) -> Result<Response<pb::ReplicationStatusResponse>, Status> {
        require_admin(&self.state.catalog, &req).await?;
        let r = crate::replication::status::report_when(&self.state, req.get_ref()).await?;
        Ok(Response::new(r))
    }

    async fn get_storage_stats(
        &self,
        req: Request<pb::GetStorageStatsRequest>,
    ) -> Result<Response<pb::GetStorageStatsResponse>, Status> {
        require_admin(&self.state.catalog, &req).await?;
        Ok(Response::new(super::storage::stats(&self.state).await?))
    }

    async fn list_orphans(
        &self,
        req: Request<pb::ListOrphansRequest>,
    ) -> Result<Response<pb::ListOrphansResponse>, Status> {
        require_admin(&self.state.catalog, &req).await?;
        Ok(Response::new(
            super::storage::list_orphans(&self.state, req.into_inner()).await?,
        ))
    }

    async fn allow_restore(
        &self,
        req: Request<pb::AllowRestoreRequest>,
    ) -> Result<Response<pb::AllowRestoreResponse>, Status> {
        require_admin(&self.state.catalog, &req).await?;
        let r = req.into_inner();
        let parse = |field: &str, v: &str| {
            AgentId::new(v)
                .map(|a| a.to_string())
                .map_err(|e| ServiceError::invalid(format!("{field}: {e}")))
        };
        let agent = parse("agent_id", &r.agent_id)?;
        let from = parse("from_agent", &r.from_agent)?;
        if agent == from {
            return Err(ServiceError::invalid("an agent can always read its own snapshots").into());
        }
        let now = now_unix_ms();
        let (a2, f2) = (agent.clone(), from.clone());
        let known = self
            .state
            .catalog
            .run(move |c| {
                Ok(grants::group_of(c, &a2)?.is_some() && grants::group_of(c, &f2)?.is_some())
            })
            .await
            .map_err(ServiceError::from)?;
        let (a2, f2) = (agent.clone(), from.clone());
        let known = known
            && crate::registry::Pending::grant(&agent, &from, now)
                .record(&self.state, move |c| {
                    grants::insert(c, &a2, &f2, now)?;
                    Ok(true)
                })
                .await?;
        if !known {
            return Err(ServiceError::NotFound(format!(
                "agent {agent} or {from} is not enrolled; see `lifeboatctl agent list`"
            ))
            .into());
        }
        tracing::warn!(agent = %agent, from_agent = %from, "restore grant created");
        Ok(Response::new(pb::AllowRestoreResponse {
            created_at_unix_ms: now,
        }))
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        require_admin(&self.state.catalog, &req).await?;
        Ok(Response::new(
            crate::enrollment::create_token(&self.state, req.into_inner()).await?,
        ))
    }

    async fn revoke_agent(
        &self,
        req: Request<pb::RevokeAgentRequest>,
    ) -> Result<Response<pb::RevokeAgentResponse>, Status> {
        require_admin(&self.state.catalog, &req).await?;
        Ok(Response::new(
            crate::enrollment::revoke(&self.state, req.into_inner()).await?,
        ))
    }

    async fn put_key_escrow(
        &self,
        req: Request<pb::PutKeyEscrowRequest>,
    ) -> Result<Response<pb::PutKeyEscrowResponse>, Status> {
        require_admin(&self.state.catalog, &req).await?;
        let escrow = req
            .into_inner()
            .escrow
            .ok_or_else(|| Status::invalid_argument("PutKeyEscrowRequest.escrow is missing"))?;
        let kind = lifeboat_common::escrow::EscrowKind::parse(&escrow.kind)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let object_key = crate::escrow::put(
            &self.state.store,
            &self.state.catalog,
            kind,
            escrow.envelope,
            now_unix_ms(),
        )
        .await?;
        Ok(Response::new(pb::PutKeyEscrowResponse {
            object_key,
            replication_queued: self.state.secondary.is_some(),
        }))
    }

    async fn scrub_secondary(
        &self,
        req: Request<pb::ScrubSecondaryRequest>,
    ) -> Result<Response<pb::ScrubSecondaryResponse>, Status> {
        require_admin(&self.state.catalog, &req).await?;
        let r = crate::replication::scrub::answer(&self.state, req.get_ref()).await?;
        Ok(Response::new(r))
    }

    async fn list_delayed_deletes(
        &self,
        req: Request<pb::ListDelayedDeletesRequest>,
    ) -> Result<Response<pb::ListDelayedDeletesResponse>, Status> {
        require_admin(&self.state.catalog, &req).await?;
        let r = crate::replication::deletes::answer(&self.state, req.get_ref().run_due)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(r))
    }

    async fn forget(
        &self,
        req: Request<pb::ForgetRequest>,
    ) -> Result<Response<pb::ForgetResponse>, Status> {
        require_admin(&self.state.catalog, &req).await?;
        Ok(Response::new(
            crate::retention::rpc::forget(&self.state, req.into_inner()).await?,
        ))
    }

    type RunBackupStream = tokio_stream::wrappers::ReceiverStream<Result<pb::RunReport, Status>>;

    async fn run_backup(
        &self,
        req: Request<pb::RunBackupRequest>,
    ) -> Result<Response<Self::RunBackupStream>, Status> {
        require_admin(&self.state.catalog, &req).await?;
        let s = crate::fleet::control::run::run_backup(&self.state, req.into_inner()).await?;
        Ok(Response::new(s))
    }

    type RunRestoreStream = tokio_stream::wrappers::ReceiverStream<Result<pb::RunReport, Status>>;

    async fn run_restore(
        &self,
        req: Request<pb::RunRestoreRequest>,
    ) -> Result<Response<Self::RunRestoreStream>, Status> {
        require_admin(&self.state.catalog, &req).await?;
        let s = crate::fleet::control::run::run_restore(&self.state, req.into_inner()).await?;
        Ok(Response::new(s))
    }

    async fn set_policy(
        &self,
        req: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::SetPolicyResponse>, Status> {
        require_admin(&self.state.catalog, &req).await?;
        Ok(Response::new(
            crate::fleet::rpc::set_policy(&self.state, req.into_inner()).await?,
        ))
    }

    async fn list_policies(
        &self,
        req: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        require_admin(&self.state.catalog, &req).await?;
        Ok(Response::new(
            crate::fleet::rpc::list_policies(&self.state, req.into_inner()).await?,
        ))
    }

    async fn fleet_status(
        &self,
        req: Request<pb::FleetStatusRequest>,
    ) -> Result<Response<pb::FleetStatusResponse>, Status> {
        require_admin(&self.state.catalog, &req).await?;
        Ok(Response::new(
            crate::fleet::rpc::fleet_status(&self.state).await?,
        ))
    }

    async fn run_gc(
        &self,
        req: Request<pb::RunGcRequest>,
    ) -> Result<Response<pb::RunGcResponse>, Status> {
        require_admin(&self.state.catalog, &req).await?;
        Ok(Response::new(
            crate::gc::worker::answer(&self.state, req.get_ref()).await?,
        ))
    }
}

fn failure_to_pb(f: &failures::FailureRow) -> pb::FailedBackup {
    pb::FailedBackup {
        id: f.id.clone(),
        agent_id: f.agent.clone(),
        source: f.source.clone(),
        started_at_unix_ms: f.started_at,
        finished_at_unix_ms: f.finished_at,
        reported_at_unix_ms: f.reported_at,
        reason: f.reason.clone(),
    }
}
