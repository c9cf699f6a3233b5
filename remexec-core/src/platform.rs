//! The platform an action asks for: one reading of REAPI's two places for it, used by the
//! scheduler (to match executors) and by the worker (to hand the isolation what it asks).

/// The property by which an executor serves only some instance names (one value each): it
/// matches only actions that require it, and the scheduler requires it, with the action's
/// instance name, of every action whose instance name some executor serves this way. Operators
/// use it to send a client's actions to executors set up for it (BuildStream's to executors
/// that chroot into the input root) without the client asking.
pub const INSTANCE_PROPERTY: &str = "instance-name";

use crate::reapi::{Action, Command};

/// A property name and value.
pub type Property = (String, String);

/// The action's platform properties, in the order sent: the Action's, or, if the Action has
/// none, the Command's (where REAPI v2.0-v2.1 clients put them).
///
/// ```
/// use remexec_core::reapi::{Action, Command, Platform, platform};
/// let platform = Platform {
///     properties: vec![platform::Property { name: "OSFamily".into(), value: "linux".into() }],
/// };
/// let action = Action { platform: Some(platform), ..Default::default() };
/// let properties = remexec_core::platform::properties(&action, &Command::default());
/// assert_eq!(properties, [("OSFamily".to_string(), "linux".to_string())]);
/// ```
#[allow(deprecated)] // Command.platform
pub fn properties(action: &Action, command: &Command) -> Vec<Property> {
    action
        .platform
        .as_ref()
        .or(command.platform.as_ref())
        .map(|p| {
            p.properties
                .iter()
                .map(|p| (p.name.clone(), p.value.clone()))
                .collect()
        })
        .unwrap_or_default()
}
