//! The examples' `--backend auto|uring|epoll` flag (include with
//! `#[path = "common/backend_arg.rs"] mod backend_arg;`).

use clap::ValueEnum;
use ringloop::Backend;

/// Which I/O backend the runtime uses.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BackendArg {
    /// io_uring where the kernel has what ringloop needs, epoll otherwise.
    Auto,
    /// io_uring.
    Uring,
    /// epoll.
    Epoll,
}

impl From<BackendArg> for Backend {
    fn from(arg: BackendArg) -> Backend {
        match arg {
            BackendArg::Auto => Backend::Auto,
            BackendArg::Uring => Backend::IoUring,
            BackendArg::Epoll => Backend::Epoll,
        }
    }
}
