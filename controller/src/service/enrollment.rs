//! EnrollmentService: the one service callable without a client certificate. It only redeems
//! join tokens ([`crate::enrollment::enroll`]); everything else requires an identity per call.

use lifeboat_proto::v1 as pb;
use lifeboat_proto::v1::enrollment_service_server::EnrollmentService;
use tonic::{Request, Response, Status};

use super::State;

/// The EnrollmentService implementation.
#[derive(Clone, Debug)]
pub struct EnrollmentApi {
    state: State,
}

impl EnrollmentApi {
    pub fn new(state: State) -> Self {
        EnrollmentApi { state }
    }
}

#[tonic::async_trait]
impl EnrollmentService for EnrollmentApi {
    async fn enroll(
        &self,
        req: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let peer = req.remote_addr().map(|a| a.ip());
        let r = crate::enrollment::enroll(&self.state, peer, req.into_inner()).await?;
        Ok(Response::new(r))
    }
}
