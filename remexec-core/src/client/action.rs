//! Building a `Command` and an `Action` the way REAPI wants them: environment variables,
//! output paths and platform properties sorted, everything encoded once, with the digests and
//! bytes ready to upload.

use std::time::Duration;

use bytes::Bytes;

use super::upload::upload_blobs;
use crate::apis::google::protobuf::Duration as ProtoDuration;
use crate::merkle::encode_message;
use crate::reapi::{Action, Command, Platform, command::EnvironmentVariable, platform};
use crate::{BlobStore, Digest, DigestFunction, Result};

/// What to run: the pieces of a `Command` and an `Action`, in any order; [`ActionBuilder::build`]
/// sorts and deduplicates them as REAPI requires.
///
/// ```
/// use remexec_core::DigestFunction;
/// use remexec_core::client::ActionBuilder;
/// use remexec_core::merkle::encode_message;
///
/// let root = encode_message(DigestFunction::Sha256, &remexec_core::reapi::Directory::default()).0;
/// let built = ActionBuilder::new(["/bin/echo", "hi"])
///     .env("PATH", "/bin")
///     .env("LANG", "C")
///     .output("out.txt")
///     .build(DigestFunction::Sha256, root);
/// assert_eq!(built.command.environment_variables[0].name, "LANG");
/// assert_eq!(built.blobs.len(), 2);
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ActionBuilder {
    /// The command line, program first.
    pub arguments: Vec<String>,
    /// Environment variables `(name, value)`.
    pub env: Vec<(String, String)>,
    /// Output paths, relative to the working directory.
    pub output_paths: Vec<String>,
    /// The working directory, relative to the input root (empty: the root).
    pub working_directory: String,
    /// Platform properties `(name, value)` the executor must offer.
    pub platform: Vec<(String, String)>,
    /// The action's timeout; `None` leaves it to the server.
    pub timeout: Option<Duration>,
    /// Neither look the result up in, nor store it into, the Action Cache.
    pub do_not_cache: bool,
}

/// An encoded `Command` and `Action`, and their digests.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BuiltAction {
    /// The `Command`.
    pub command: Command,
    /// The `Command`'s digest.
    pub command_digest: Digest,
    /// The `Action`.
    pub action: Action,
    /// The `Action`'s digest, for `ExecuteRequest.action_digest`.
    pub action_digest: Digest,
    /// The encoded `Command` and `Action`, to upload.
    pub blobs: Vec<(Digest, Bytes)>,
}

impl ActionBuilder {
    /// A builder for the command line `arguments`.
    pub fn new(arguments: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            arguments: arguments.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Adds an environment variable.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Adds an output path.
    pub fn output(mut self, path: impl Into<String>) -> Self {
        self.output_paths.push(path.into());
        self
    }

    /// Sets the working directory.
    pub fn working_directory(mut self, dir: impl Into<String>) -> Self {
        self.working_directory = dir.into();
        self
    }

    /// Adds a platform property.
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.platform.push((name.into(), value.into()));
        self
    }

    /// Sets the timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets `do_not_cache`.
    pub fn do_not_cache(mut self, yes: bool) -> Self {
        self.do_not_cache = yes;
        self
    }

    /// The platform, properties sorted by name then value; `None` if there are none.
    fn platform_message(&self) -> Option<Platform> {
        let mut properties: Vec<platform::Property> = self
            .platform
            .iter()
            .map(|(name, value)| platform::Property {
                name: name.clone(),
                value: value.clone(),
            })
            .collect();
        properties.sort_by(|a, b| (&a.name, &a.value).cmp(&(&b.name, &b.value)));
        (!properties.is_empty()).then_some(Platform { properties })
    }

    /// The `Command`: environment sorted by name, outputs sorted and deduplicated, and the
    /// platform also in `Command.platform` for servers older than REAPI v2.2.
    pub fn command(&self) -> Command {
        let mut env = self.env.clone();
        env.sort();
        let mut outputs = self.output_paths.clone();
        outputs.sort();
        outputs.dedup();
        #[allow(deprecated)] // Command.platform: for servers older than REAPI v2.2
        Command {
            arguments: self.arguments.clone(),
            environment_variables: env
                .into_iter()
                .map(|(name, value)| EnvironmentVariable { name, value })
                .collect(),
            output_paths: outputs,
            working_directory: self.working_directory.clone(),
            platform: self.platform_message(),
            ..Default::default()
        }
    }

    /// Encodes the `Command` and the `Action` over the input root `input_root`.
    pub fn build(&self, function: DigestFunction, input_root: Digest) -> BuiltAction {
        let command = self.command();
        let (command_digest, command_bytes) = encode_message(function, &command);
        let action = Action {
            command_digest: Some(command_digest.to_proto()),
            input_root_digest: Some(input_root.to_proto()),
            timeout: self.timeout.map(|t| ProtoDuration {
                seconds: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
                nanos: t.subsec_nanos() as i32,
            }),
            do_not_cache: self.do_not_cache,
            platform: self.platform_message(),
            ..Default::default()
        };
        let (action_digest, action_bytes) = encode_message(function, &action);
        BuiltAction {
            command,
            command_digest,
            action,
            action_digest,
            blobs: vec![
                (command_digest, command_bytes),
                (action_digest, action_bytes),
            ],
        }
    }
}

impl BuiltAction {
    /// Uploads the `Command` and the `Action` (those the store lacks).
    pub async fn upload(&self, store: &dyn BlobStore, instance: &str) -> Result<()> {
        upload_blobs(store, instance, self.blobs.clone()).await
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    const F: DigestFunction = DigestFunction::Sha256;

    #[test]
    fn order_of_insertion_does_not_change_the_digest() {
        let root = F.digest_of(b"root");
        let a = ActionBuilder::new(["cc", "-c"])
            .env("B", "2")
            .env("A", "1")
            .output("z")
            .output("a")
            .output("z")
            .property("os", "linux")
            .property("arch", "x86")
            .build(F, root);
        let b = ActionBuilder::new(["cc", "-c"])
            .env("A", "1")
            .env("B", "2")
            .output("a")
            .output("z")
            .property("arch", "x86")
            .property("os", "linux")
            .build(F, root);
        assert_eq!(a.action_digest, b.action_digest);
        assert_eq!(a.command.output_paths, ["a", "z"]);
        let names: Vec<_> = a
            .command
            .environment_variables
            .iter()
            .map(|v| &v.name)
            .collect();
        assert_eq!(names, ["A", "B"]);
        let platform = a.action.platform.as_ref().unwrap();
        assert_eq!(platform.properties[0].name, "arch");
        // The digests name the encoded bytes.
        assert_eq!(a.blobs[0].0, F.digest_of(&a.blobs[0].1));
        assert_eq!(Command::decode(a.blobs[0].1.clone()).unwrap(), a.command);
        assert_eq!(Action::decode(a.blobs[1].1.clone()).unwrap(), a.action);
    }

    #[test]
    fn timeout_cache_and_root_reach_the_action() {
        let root = F.digest_of(b"root");
        let plain = ActionBuilder::new(["true"]).build(F, root);
        assert_eq!(plain.action.timeout, None);
        assert!(plain.action.platform.is_none());
        let built = ActionBuilder::new(["true"])
            .timeout(Duration::from_millis(1500))
            .do_not_cache(true)
            .working_directory("sub")
            .build(F, root);
        let t = built.action.timeout.unwrap();
        assert_eq!((t.seconds, t.nanos), (1, 500_000_000));
        assert!(built.action.do_not_cache);
        assert_eq!(built.command.working_directory, "sub");
        assert_eq!(built.action.input_root_digest, Some(root.to_proto()));
        assert_ne!(built.action_digest, plain.action_digest);
    }
}
