//! Process exit codes shared by `lifeboat-agent`, `lifeboat-controller` and `lifeboatctl`.
//! They are part of the CLI contract (scripts and monitoring rely on them): do not renumber.

/// Everything worked.
pub const SUCCESS: i32 = 0;
/// An error; the message says what and what to do.
pub const ERROR: i32 = 1;
/// The command line was wrong (clap's own code for usage errors).
pub const USAGE: i32 = 2;
/// A snapshot was committed, but some inputs could not be read (listed in the output).
pub const PARTIAL: i32 = 3;
/// The controller could not be reached (network, DNS, refused connection, timeout).
pub const UNREACHABLE: i32 = 4;
/// The controller refused our certificate (unknown CA, revoked, expired, wrong role).
pub const CERTIFICATE_REFUSED: i32 = 5;

/// The table printed in `--help` of every binary.
pub const HELP_TABLE: &str = "Exit codes:
  0  success
  1  error
  2  usage error
  3  partial: snapshot committed, some inputs were unreadable
  4  controller unreachable
  5  certificate refused by the controller (unknown CA, revoked, expired or wrong role)";
