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
use crate::catalog::{failures, grants, snapshots};
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
    let inserted = state.catalog.run(move |c| agents::insert(c, &row)).await?;
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
        let rows = self
            .state
            .catalog
            .run(|c| agents::list(c))
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: rows.iter().map(wire::agent_to_pb).collect(),
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
                let known =
                    grants::group_of(c, &a2)?.is_some() && grants::group_of(c, &f2)?.is_some();
                if known {
                    grants::insert(c, &a2, &f2, now)?;
                }
                Ok(known)
            })
            .await
            .map_err(ServiceError::from)?;
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
        Err(Status::unimplemented("key escrow is not implemented yet"))
    }

    async fn scrub_secondary(
        &self,
        req: Request<pb::ScrubSecondaryRequest>,
    ) -> Result<Response<pb::ScrubSecondaryResponse>, Status> {
        require_admin(&self.state.catalog, &req).await?;
        Err(Status::unimplemented("scrub is not implemented yet"))
    }

    async fn list_delayed_deletes(
        &self,
        req: Request<pb::ListDelayedDeletesRequest>,
    ) -> Result<Response<pb::ListDelayedDeletesResponse>, Status> {
        require_admin(&self.state.catalog, &req).await?;
        Err(Status::unimplemented(
            "delayed deletes are not implemented yet",
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
