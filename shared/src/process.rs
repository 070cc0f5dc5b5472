//! Child processes that never outlive their parent.

use nix::sys::signal::Signal;

/// Makes the child that `cmd` starts receive `signal` when this process dies,
/// however it dies (SIGKILL included): Linux's parent-death signal. A child
/// whose parent is already gone when it starts does not start.
///
/// The kernel sends the signal when the *thread* that forked the child ends, so
/// call `spawn` from a thread that lives as long as the child should (a Tokio
/// runtime worker or the main thread; not a `spawn_blocking` thread). Elsewhere
/// than Linux this does nothing.
#[allow(unsafe_code)]
pub fn die_with_parent(cmd: &mut tokio::process::Command, signal: Signal) {
    #[cfg(target_os = "linux")]
    {
        let parent = nix::unistd::getpid();
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe functions (prctl, getppid); its errors are raw OS
        // error codes, so it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(signal)?;
                // The parent died between fork and prctl: no signal will come.
                if nix::unistd::getppid() != parent {
                    return Err(nix::errno::Errno::ESRCH.into());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (cmd, signal);
    }
}
