//! The one error type of remexec, and the one place where errors become gRPC codes.

use std::fmt::Display;

/// A `Result` whose error is remexec's [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, by kind.
///
/// A miss is never an error: lookups return `Ok(None)`. `Err` means the request was bad or the
/// infrastructure failed. Every variant maps to exactly one gRPC code in
/// [`Error::code`]; no other place in remexec chooses gRPC codes for these errors.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The caller sent something malformed: a bad digest, resource name, or message.
    InvalidArgument(Message),
    /// A named thing (blob, operation, instance) does not exist where one was required.
    NotFound(Message),
    /// Something that must be unique (a live worker's name) is taken.
    AlreadyExists(Message),
    /// A read offset or similar position lies past the end.
    OutOfRange(Message),
    /// The system is not in a state where the request can run (for example missing inputs).
    FailedPrecondition(Message),
    /// A limit was hit: disk budget, message size, queue length.
    ResourceExhausted(Message),
    /// The service or a backend is temporarily unreachable; the caller may retry.
    Unavailable(Message),
    /// A deadline passed before the work finished.
    DeadlineExceeded(Message),
    /// The work was cancelled.
    Cancelled(Message),
    /// A consistency check failed: content fetched from an origin did not match the checksum
    /// asked for. The caller may retry.
    Aborted(Message),
    /// The request is valid REAPI but this server does not do it.
    Unimplemented(Message),
    /// The caller did not prove who it is: no credentials where they are required, or
    /// credentials that are not valid.
    Unauthenticated(Message),
    /// The caller is known but may not do this.
    PermissionDenied(Message),
    /// A local I/O operation failed.
    Io {
        /// What was being done, e.g. the path being written.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A bug or broken invariant inside remexec.
    Internal(Message),
}

/// What an [`enum@Error`] says, and the error that caused it, if another error did: the source
/// that `std::error::Error::source` returns, for callers that look at it. Its text already says
/// the cause (`"reading the key: no such file"`, as [`Error::Io`] shows its context and
/// source), and it reads as that text (`Deref<Target = str>`).
#[derive(Debug)]
pub struct Message {
    text: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Message {
    /// `context`, caused by `source`: says `"{context}: {source}"` and keeps `source`.
    pub fn caused_by(
        context: impl Display,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        let source = source.into();
        Self {
            text: format!("{context}: {source}"),
            source: Some(source),
        }
    }

    /// Says what `source` says, and keeps it.
    pub fn from_error(
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        let source = source.into();
        Self {
            text: source.to_string(),
            source: Some(source),
        }
    }

    /// The error that caused this one, if another error did.
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }
}

/// A message that is an error of its own (a binary's configuration error, say), its source the
/// cause.
impl std::error::Error for Message {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<String> for Message {
    fn from(text: String) -> Self {
        Self { text, source: None }
    }
}

/// An error as another's message: says what it says and keeps it as the source.
impl From<Error> for Message {
    fn from(error: Error) -> Self {
        Self::from_error(error)
    }
}

impl From<&str> for Message {
    fn from(text: &str) -> Self {
        text.to_string().into()
    }
}

impl std::ops::Deref for Message {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl Display for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Messages are equal when they say the same (their sources are not compared).
impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl PartialEq<str> for Message {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl PartialEq<&str> for Message {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io { context, source } => write!(f, "{context}: {source}"),
            Self::Internal(m) => write!(f, "internal error: {m}"),
            other => match other.message() {
                Some(m) => write!(f, "{m}"),
                None => Ok(()),
            },
        }
    }
}

/// Errors are equal when they are of one kind and say the same (sources are not compared).
impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && self.to_string() == other.to_string()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            other => other
                .message()
                .and_then(Message::cause)
                .map(|e| e as &(dyn std::error::Error + 'static)),
        }
    }
}

impl Error {
    /// What the error says, for every kind but [`Error::Io`].
    pub fn message(&self) -> Option<&Message> {
        match self {
            Self::InvalidArgument(m)
            | Self::NotFound(m)
            | Self::AlreadyExists(m)
            | Self::OutOfRange(m)
            | Self::FailedPrecondition(m)
            | Self::ResourceExhausted(m)
            | Self::Unavailable(m)
            | Self::DeadlineExceeded(m)
            | Self::Cancelled(m)
            | Self::Aborted(m)
            | Self::Unimplemented(m)
            | Self::Unauthenticated(m)
            | Self::PermissionDenied(m)
            | Self::Internal(m) => Some(m),
            Self::Io { .. } => None,
        }
    }

    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(message: impl Display) -> Self {
        Self::InvalidArgument(message.to_string().into())
    }

    /// An [`Error::Internal`] saying `context`, caused by `source` (kept as the error's
    /// `source()`).
    pub fn internal(
        context: impl Display,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self::Internal(Message::caused_by(context, source))
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
            Self::Aborted(_) => Code::Aborted,
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
            Code::InvalidArgument => Self::InvalidArgument(message.into()),
            Code::NotFound => Self::NotFound(message.into()),
            Code::Unauthenticated => Self::Unauthenticated(message.into()),
            Code::PermissionDenied => Self::PermissionDenied(message.into()),
            Code::AlreadyExists => Self::AlreadyExists(message.into()),
            Code::OutOfRange => Self::OutOfRange(message.into()),
            Code::FailedPrecondition => Self::FailedPrecondition(message.into()),
            Code::ResourceExhausted => Self::ResourceExhausted(message.into()),
            Code::Unavailable => Self::Unavailable(message.into()),
            Code::DeadlineExceeded => Self::DeadlineExceeded(message.into()),
            Code::Cancelled => Self::Cancelled(message.into()),
            Code::Aborted => Self::Aborted(message.into()),
            Code::Unimplemented => Self::Unimplemented(message.into()),
            // A broken connection (tonic reports it as Unknown with the transport error as its
            // source, unlike an Unknown the server sent): worth a retry elsewhere.
            Code::Unknown if std::error::Error::source(&status).is_some() => {
                Self::Unavailable(message.into())
            }
            code => Self::Internal(format!("{code:?}: {message}").into()),
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

    #[test]
    fn errors_keep_their_sources_and_say_them() {
        use std::error::Error as _;
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "no entry");
        let error = Error::FailedPrecondition(Message::caused_by("reading the key", io));
        assert_eq!(error.to_string(), "reading the key: no entry");
        assert_eq!(error.code(), tonic::Code::FailedPrecondition);
        let source = error.source().expect("the source is kept");
        let io = source.downcast_ref::<std::io::Error>().expect("as it was");
        assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);
        let internal = Error::internal("joining", std::fmt::Error);
        assert_eq!(
            internal.to_string(),
            "internal error: joining: an error occurred when formatting an argument"
        );
        assert!(internal.source().unwrap().is::<std::fmt::Error>());
        // A plain message has none, and reads as its text.
        let plain = Error::NotFound("blob abc".into());
        assert!(plain.source().is_none());
        assert!(matches!(&plain, Error::NotFound(m) if *m == "blob abc" && m.contains("abc")));
        let status = tonic::Status::from(error);
        assert_eq!(status.message(), "reading the key: no entry");
    }
}
