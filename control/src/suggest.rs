//! `svidcar policy suggest`, pure: from the edge table over a window, the least-privilege
//! `AuthorizationPolicy` of every destination workload — exactly the callers, ports and (for
//! HTTP) methods and path prefixes that were allowed — as YAML that `svidcar policy check`
//! accepts, either enforcing (`ALLOW`) or as its `AUDIT` counterpart (matching exactly what the
//! `ALLOW` policy would deny); and the diff against the policies in force. Fetching edges and
//! writing files are left to the command.

mod diff;
mod grants;
mod render;
mod window;

pub use diff::{diff, Diff, UnusedRule};
pub use grants::{grants, CallerGrants, DestinationGrants, PathMatch};
pub use render::{render, Mode, SuggestedPolicy};
pub use window::{parse_since, WindowError};
