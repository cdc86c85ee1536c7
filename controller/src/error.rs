//! Service errors and the one place they become `tonic::Status`.
//!
//! Handlers return [`ServiceError`]; the `From<ServiceError> for Status` impl picks the gRPC code
//! and logs server-side failures once (client mistakes are not logged as errors).

use thiserror::Error;
use tonic::Status;

use crate::catalog::CatalogError;
use crate::store::StoreError;

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DataLoss(String),
    /// A dependency (the object store) did not answer in time; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A condition the caller asked to wait for did not hold in time.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A per-caller limit (concurrent streams) is reached; retry when the others finish.
    #[error("{0}")]
    ResourceExhausted(String),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        ServiceError::InvalidArgument(msg.into())
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        let msg = e.to_string();
        match e {
            ServiceError::InvalidArgument(_) => Status::invalid_argument(msg),
            ServiceError::NotFound(_) => Status::not_found(msg),
            ServiceError::AlreadyExists(_) => Status::already_exists(msg),
            ServiceError::Unauthenticated(_) => Status::unauthenticated(msg),
            ServiceError::PermissionDenied(_) => Status::permission_denied(msg),
            ServiceError::FailedPrecondition(_) => Status::failed_precondition(msg),
            ServiceError::DeadlineExceeded(_) => Status::deadline_exceeded(msg),
            ServiceError::ResourceExhausted(_) => Status::resource_exhausted(msg),
            ServiceError::DataLoss(_) => {
                tracing::error!(error = %msg, "data loss detected");
                Status::data_loss(msg)
            }
            ServiceError::Catalog(_) | ServiceError::Internal(_) => {
                tracing::error!(error = %msg, "request failed");
                Status::internal(msg)
            }
            ServiceError::Unavailable(_) => {
                tracing::warn!(error = %msg, "request failed: dependency unavailable");
                Status::unavailable(msg)
            }
            ServiceError::Store(_) => {
                tracing::error!(error = %msg, "object store request failed");
                Status::unavailable(msg)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_mapped() {
        let s: Status = ServiceError::invalid("bad id").into();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(s.message(), "bad id");
        let s: Status = ServiceError::PermissionDenied("no".into()).into();
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
        let s: Status = ServiceError::DataLoss("chunk x in pack y".into()).into();
        assert_eq!(s.code(), tonic::Code::DataLoss);
    }
}
