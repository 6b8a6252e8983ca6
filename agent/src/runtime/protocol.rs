//! Messages between the agent and its runtime helper: one JSON object per
//! line. Requests carry a sequence number the response echoes; exits of
//! container processes arrive unasked as events.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What the agent asks of the helper.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Creates a container from an OCI bundle; its init waits to be started.
    /// `stdout`/`stderr` are FIFOs the agent already reads.
    Create {
        id: String,
        bundle: PathBuf,
        stdout: Option<PathBuf>,
        stderr: Option<PathBuf>,
        /// A FIFO the agent writes the container's stdin to (its spec has
        /// `stdin: true`); /dev/null when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stdin: Option<PathBuf>,
        /// Run the container's process on a PTY (its `tty: true`) whose
        /// master goes to this listening unix socket of the agent; the
        /// stdio paths are then unused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        console_socket: Option<PathBuf>,
    },
    Start {
        id: String,
    },
    Kill {
        id: String,
        signal: i32,
    },
    /// Removes the container's state and cgroup (`force` kills it first).
    Delete {
        id: String,
        force: bool,
    },
    State {
        id: String,
    },
    /// Every container the helper's state directory holds.
    List,
    /// Ends the helper (containers keep running; a new helper adopts them).
    Shutdown,
    /// Runs a process in a running container's namespaces and cgroup; its
    /// pid comes back in `state.pid` and its exit as an event.
    Exec {
        id: String,
        args: Vec<String>,
        env: Vec<String>,
        stdin: Option<PathBuf>,
        stdout: Option<PathBuf>,
        stderr: Option<PathBuf>,
        /// Run on a PTY instead of the stdio paths. Absent from agents that
        /// predate it, so older peers still parse each other.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        terminal: Option<Terminal>,
    },
}

/// A PTY for an exec'd process. libcontainer opens it inside the
/// container (so the process sees its own /dev/pts/N and has it as
/// controlling terminal) and sends the master over `console_socket`, a
/// listening unix socket of the agent, which keeps the master.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Terminal {
    pub console_socket: PathBuf,
    /// The client's initial size; 0 when it sent none. Set on the PTY
    /// before the program runs, so its first look at the size is right.
    pub width: u16,
    pub height: u16,
}

/// A request and its sequence number.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub seq: u64,
    #[serde(flatten)]
    pub request: Request,
}

/// One container as the runtime sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    /// creating, created, running, stopped, paused
    pub status: String,
    pub pid: Option<i32>,
    pub bundle: PathBuf,
}

/// What the helper sends back.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    /// The answer to request `seq`.
    Reply {
        seq: u64,
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        state: Option<ContainerState>,
        #[serde(default)]
        list: Vec<ContainerState>,
    },
    /// A process the helper reaped: a container's init (or a stray child).
    Exit {
        pid: i32,
        /// Exit code, or 128 + signal number when killed by a signal.
        code: i32,
        signal: Option<i32>,
    },
}
