//! The one error type of remexec, and the one place where errors become gRPC codes.

use std::fmt::Display;

/// A `Result` whose error is remexec's [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, by kind.
///
/// A miss is never an error: lookups return `Ok(None)`. `Err` means the request was bad or the
/// infrastructure failed. Every variant maps to exactly one gRPC code in
/// [`Error::code`]; no other place in remexec chooses gRPC codes for these errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller sent something malformed: a bad digest, resource name, or message.
    #[error("{0}")]
    InvalidArgument(String),
    /// A named thing (blob, operation, instance) does not exist where one was required.
    #[error("{0}")]
    NotFound(String),
    /// Something that must be unique (a live worker's name) is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// A read offset or similar position lies past the end.
    #[error("{0}")]
    OutOfRange(String),
    /// The system is not in a state where the request can run (for example missing inputs).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A limit was hit: disk budget, message size, queue length.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The service or a backend is temporarily unreachable; the caller may retry.
    #[error("{0}")]
    Unavailable(String),
    /// A deadline passed before the work finished.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The work was cancelled.
    #[error("{0}")]
    Cancelled(String),
    /// The request is valid REAPI but this server does not do it.
    #[error("{0}")]
    Unimplemented(String),
    /// The caller did not prove who it is: no credentials where they are required, or
    /// credentials that are not valid.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// A local I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. the path being written.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A bug or broken invariant inside remexec.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(message: impl Display) -> Self {
        Self::InvalidArgument(message.to_string())
    }

    /// Wraps an I/O error with a description of what was being done.
    pub fn io(context: impl Display, source: std::io::Error) -> Self {
        Self::Io {
            context: context.to_string(),
            source,
        }
    }

    /// The gRPC code for this error. This is the single place where codes are chosen.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::OutOfRange(_) => Code::OutOfRange,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::Unavailable(_) => Code::Unavailable,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::Cancelled(_) => Code::Cancelled,
            Self::Unimplemented(_) => Code::Unimplemented,
            Self::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
                Code::ResourceExhausted
            }
            Self::Io { .. } | Self::Internal(_) => Code::Internal,
        }
    }

    /// The error a non-OK `google.rpc.Status` (from a batch entry or an `ExecuteResponse`)
    /// stands for, mapped like a `tonic::Status` with that code.
    pub fn from_rpc_status(status: &bazel_remote_apis::google::rpc::Status) -> Self {
        Self::from(tonic::Status::new(
            tonic::Code::from_i32(status.code),
            status.message.clone(),
        ))
    }

    /// The `google.rpc.Status` form, for per-item statuses inside batch responses.
    pub fn to_rpc_status(&self) -> bazel_remote_apis::google::rpc::Status {
        bazel_remote_apis::google::rpc::Status {
            code: self.code() as i32,
            message: self.to_string(),
            details: Vec::new(),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        tonic::Status::new(error.code(), error.to_string())
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        let message = match status.message() {
            // Say at least what the code means, rather than nothing.
            "" => format!("the server answered {}", status.code().description()),
            text => text.to_string(),
        };
        match status.code() {
            Code::InvalidArgument => Self::InvalidArgument(message),
            Code::NotFound => Self::NotFound(message),
            Code::Unauthenticated => Self::Unauthenticated(message),
            Code::PermissionDenied => Self::PermissionDenied(message),
            Code::AlreadyExists => Self::AlreadyExists(message),
            Code::OutOfRange => Self::OutOfRange(message),
            Code::FailedPrecondition => Self::FailedPrecondition(message),
            Code::ResourceExhausted => Self::ResourceExhausted(message),
            Code::Unavailable => Self::Unavailable(message),
            Code::DeadlineExceeded => Self::DeadlineExceeded(message),
            Code::Cancelled => Self::Cancelled(message),
            Code::Unimplemented => Self::Unimplemented(message),
            // A broken connection (tonic reports it as Unknown with the transport error as its
            // source, unlike an Unknown the server sent): worth a retry elsewhere.
            Code::Unknown if std::error::Error::source(&status).is_some() => {
                Self::Unavailable(message)
            }
            code => Self::Internal(format!("{code:?}: {message}")),
        }
    }
}

/// The `google.rpc.Status` that means success, for batch responses.
pub fn ok_rpc_status() -> bazel_remote_apis::google::rpc::Status {
    bazel_remote_apis::google::rpc::Status::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_chosen_by_kind() {
        assert_eq!(Error::invalid("x").code(), tonic::Code::InvalidArgument);
        assert_eq!(Error::NotFound("x".into()).code(), tonic::Code::NotFound);
        let full = Error::io(
            "write",
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        );
        assert_eq!(full.code(), tonic::Code::ResourceExhausted);
        let status: tonic::Status = Error::invalid("bad digest").into();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "bad digest");
        assert_eq!(Error::from(status).code(), tonic::Code::InvalidArgument);
        let bare = Error::from(tonic::Status::new(tonic::Code::Unimplemented, ""));
        assert_eq!(bare.code(), tonic::Code::Unimplemented);
        assert!(bare.to_string().contains("not implemented"), "{bare}");
        // Unknown from the server is internal; Unknown from a broken connection is not.
        let sent = Error::from(tonic::Status::unknown("boom"));
        assert_eq!(sent.code(), tonic::Code::Internal);
        let broken = tonic::Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(broken.code(), tonic::Code::Unknown);
        assert_eq!(Error::from(broken).code(), tonic::Code::Unavailable);
    }
}
