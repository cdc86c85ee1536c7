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
use crate::catalog::snapshots;
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
        let rows = self
            .state
            .catalog
            .run(move |c| snapshots::list(c, agent.as_deref(), source.as_deref()))
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::ListSnapshotsResponse {
            snapshots: rows.iter().map(wire::snapshot_to_pb).collect(),
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
        Ok(Response::new(
            find_snapshot(&self.state, None, id, "").await?,
        ))
    }
}
