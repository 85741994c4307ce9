//! The one place kraal runs host programs: every child gets a timeout, is killed when its
//! handle drops, and failures carry the program, its arguments and its stderr.
//!
//! `Command::new` is banned elsewhere through clippy's `disallowed-methods`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{program} is not installed (not found on PATH)")]
    NotFound { program: String },
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` timed out after {secs} s")]
    Timeout { command: String, secs: u64 },
    #[error("`{command}` exited with {status}: {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// A host command to run.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    timeout: Duration,
    stdin: Option<Vec<u8>>,
    new_session: bool,
    netns: Option<PathBuf>,
    masked: Option<PathBuf>,
    stdout_file: Option<PathBuf>,
    lines: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Whether an environment variable holds a credential that no child process gets:
/// the model keys and tokens kraal knows, anything named `*_API_KEY` or `*_OAUTH_TOKEN`,
/// and the CLI's `KRAAL_TOKEN`.
pub fn is_credential_var(name: &std::ffi::OsStr) -> bool {
    let Some(n) = name.to_str() else {
        return false;
    };
    let n = n.to_ascii_uppercase();
    n.ends_with("_API_KEY")
        || n.ends_with("_OAUTH_TOKEN")
        || matches!(
            n.as_str(),
            "ANTHROPIC_AUTH_TOKEN"
                | "KRAAL_TOKEN"
                | "GITHUB_TOKEN"
                | "GH_TOKEN"
                | "AWS_SECRET_ACCESS_KEY"
                | "AWS_SESSION_TOKEN"
        )
}

impl Cmd {
    pub fn new(program: impl Into<OsString>) -> Self {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            timeout: Duration::from_secs(60),
            stdin: None,
            new_session: false,
            netns: None,
            masked: None,
            stdout_file: None,
            lines: None,
        }
    }

    /// Also sends every line the command prints (stdout and stderr) to `tx` as it comes,
    /// for progress reports. The output is still captured.
    pub fn lines_to(mut self, tx: tokio::sync::mpsc::UnboundedSender<String>) -> Self {
        self.lines = Some(tx);
        self
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }

    /// Runs the child in a new session so that long-lived descendants (sandbox runtimes)
    /// neither receive the daemon's terminal signals nor die with its process group.
    pub fn new_session(mut self) -> Self {
        self.new_session = true;
        self
    }

    /// Runs in the network namespace pinned at `path` (`setns(2)` between fork and
    /// exec: what `nsenter --net=` does, without its process).
    pub fn in_netns(mut self, path: impl Into<PathBuf>) -> Self {
        self.netns = Some(path.into());
        self
    }

    /// Runs in a mount namespace of its own in which directory `path` is covered by an
    /// empty read-only tmpfs (`unshare(CLONE_NEWNS)` and `mount(2)` between fork and exec),
    /// so the program and its descendants do not see what is under it.
    pub fn masking(mut self, path: impl Into<PathBuf>) -> Self {
        self.masked = Some(path.into());
        self
    }

    /// Sends stdout to a file instead of capturing it (for long-lived descendants that
    /// would otherwise hold our pipe open after the command returns).
    pub fn stdout_to(mut self, path: impl Into<PathBuf>) -> Self {
        self.stdout_file = Some(path.into());
        self
    }

    /// Runs the program with `--version` (5 s at most) and returns the first line it
    /// printed: how host checks report what they found.
    pub async fn version_line(self) -> Result<String, ProcessError> {
        let out = self
            .arg("--version")
            .timeout(Duration::from_secs(5))
            .run()
            .await?;
        Ok(out
            .stdout_str()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned())
    }

    /// The command line, for messages.
    pub fn display(&self) -> String {
        let mut s = self.program.to_string_lossy().into_owned();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    /// Runs in the foreground on this terminal (an editor the user works in): standard
    /// input and output are inherited, no timeout; returns how it exited.
    pub fn interactive(self) -> Result<std::process::ExitStatus, ProcessError> {
        let program = self.program.to_string_lossy().into_owned();
        #[allow(clippy::disallowed_methods)]
        let mut cmd = std::process::Command::new(&self.program);
        cmd.args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        cmd.status().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ProcessError::NotFound { program }
            } else {
                ProcessError::Spawn { program, source }
            }
        })
    }

    /// Runs to completion; a non-zero exit is an error carrying stderr.
    pub async fn run(self) -> Result<Output, ProcessError> {
        let command = self.display();
        let started = std::time::Instant::now();
        let program = self.program.to_string_lossy().into_owned();
        #[allow(clippy::disallowed_methods)]
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args).kill_on_drop(true);
        // Credentials in the daemon's environment stay in the daemon: sandbox runtimes
        // (runsc's sentry, QEMU) would otherwise hold them in their own memory.
        for (k, _) in std::env::vars_os() {
            if is_credential_var(&k) {
                cmd.env_remove(&k);
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        if let Some(path) = &self.stdout_file {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| ProcessError::Spawn {
                    program: program.clone(),
                    source,
                })?;
            let f2 = f.try_clone().map_err(|source| ProcessError::Spawn {
                program: program.clone(),
                source,
            })?;
            cmd.stdout(Stdio::from(f)).stderr(Stdio::from(f2));
        } else {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        if self.new_session {
            // SAFETY: setsid is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    nix::unistd::setsid()
                        .map(|_| ())
                        .map_err(std::io::Error::from)
                });
            }
        }
        if let Some(path) = &self.netns {
            // Opened here, joined in the child: setns is a plain system call.
            let ns = std::fs::File::open(path).map_err(|source| ProcessError::Spawn {
                program: format!("{program} (in network namespace {})", path.display()),
                source,
            })?;
            // SAFETY: setns is async-signal-safe; the file outlives the spawn.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)
                });
            }
        }
        if let Some(path) = &self.masked {
            use std::os::unix::ffi::OsStrExt;
            // Checked here: a failed mount in the child would read as "program not found".
            if !path.is_dir() {
                return Err(ProcessError::Spawn {
                    program: format!("{program} (masking {})", path.display()),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the directory to mask does not exist",
                    ),
                });
            }
            // Every string is made before the fork: the child only makes system calls.
            let c = |b: &[u8]| {
                std::ffi::CString::new(b).map_err(|_| ProcessError::Spawn {
                    program: program.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "a path with a NUL byte",
                    ),
                })
            };
            let (root, target) = (c(b"/")?, c(path.as_os_str().as_bytes())?);
            let (fstype, opts) = (c(b"tmpfs")?, c(b"size=4k,mode=0555")?);
            // SAFETY: unshare and mount are plain system calls on strings made above.
            unsafe {
                cmd.pre_exec(move || {
                    let check = |r: libc::c_int| {
                        if r == 0 {
                            Ok(())
                        } else {
                            Err(std::io::Error::last_os_error())
                        }
                    };
                    check(libc::unshare(libc::CLONE_NEWNS))?;
                    check(libc::mount(
                        std::ptr::null(),
                        root.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ))?;
                    check(libc::mount(
                        fstype.as_ptr(),
                        target.as_ptr(),
                        fstype.as_ptr(),
                        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        opts.as_ptr().cast(),
                    ))
                });
            }
        }
        let mut child = cmd.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ProcessError::NotFound {
                    program: program.clone(),
                }
            } else {
                ProcessError::Spawn {
                    program: program.clone(),
                    source,
                }
            }
        })?;
        if let Some(data) = self.stdin {
            use tokio::io::AsyncWriteExt;
            if let Some(mut sin) = child.stdin.take() {
                tokio::spawn(async move {
                    let _ = sin.write_all(&data).await;
                });
            }
        }
        let mut out = child.stdout.take();
        let mut err = child.stderr.take();
        let collect = async {
            let mut o = Vec::new();
            let mut e = Vec::new();
            let lines = self.lines.clone();
            let ro = async {
                if let Some(s) = out.as_mut() {
                    read_all(s, &mut o, lines.as_ref()).await;
                }
            };
            let re = async {
                if let Some(s) = err.as_mut() {
                    read_all(s, &mut e, lines.as_ref()).await;
                }
            };
            tokio::join!(ro, re);
            let status = child.wait().await;
            (o, e, status)
        };
        let (stdout, stderr, status) =
            tokio::time::timeout(self.timeout, collect)
                .await
                .map_err(|_| ProcessError::Timeout {
                    command: command.clone(),
                    secs: self.timeout.as_secs(),
                })?;
        let status = status.map_err(|source| ProcessError::Spawn { program, source })?;
        tracing::debug!(
            target: "kraal::process",
            took_ms = started.elapsed().as_secs_f64() * 1e3,
            %status,
            "{command}"
        );
        if !status.success() {
            let mut stderr_text = String::from_utf8_lossy(&stderr).trim().to_owned();
            if stderr_text.is_empty() {
                stderr_text = String::from_utf8_lossy(&stdout).trim().to_owned();
            }
            if stderr_text.len() > 2000 {
                stderr_text = format!("…{}", &stderr_text[stderr_text.len() - 2000..]);
            }
            return Err(ProcessError::Failed {
                command,
                status: status.to_string(),
                stderr: stderr_text,
            });
        }
        Ok(Output { stdout, stderr })
    }
}

/// Reads `r` to its end into `buf`, sending each complete line to `lines` if given.
async fn read_all<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    lines: Option<&tokio::sync::mpsc::UnboundedSender<String>>,
) {
    let mut chunk = [0u8; 8192];
    let mut line_start = 0;
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if let Some(tx) = lines {
                    while let Some(i) = buf[line_start..].iter().position(|&b| b == b'\n') {
                        let l = String::from_utf8_lossy(&buf[line_start..line_start + i]);
                        let _ = tx.send(l.trim_end_matches('\r').to_owned());
                        line_start += i + 1;
                    }
                }
            }
        }
    }
    if let Some(tx) = lines
        && line_start < buf.len()
    {
        let _ = tx.send(String::from_utf8_lossy(&buf[line_start..]).into_owned());
    }
}

/// Finds `program` on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_masked_directory_is_empty_for_the_program_only() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("secret"), b"x").unwrap();
        let ls = |masked: bool| {
            let mut c = Cmd::new("ls").arg("-A").arg(d.path());
            if masked {
                c = c.masking(d.path());
            }
            c.run()
        };
        assert_eq!(ls(true).await.unwrap().stdout_str(), "");
        assert_eq!(ls(false).await.unwrap().stdout_str(), "secret\n");
        let e = Cmd::new("true")
            .masking(d.path().join("missing"))
            .run()
            .await
            .unwrap_err();
        assert!(matches!(e, ProcessError::Spawn { .. }), "{e:?}");
        assert!(
            d.path().join("secret").is_file(),
            "the host's view is untouched"
        );
    }

    #[test]
    fn credential_variables_are_recognized() {
        for v in [
            "ANTHROPIC_API_KEY",
            "OPENAI_API_KEY",
            "GEMINI_API_KEY",
            "GOOGLE_API_KEY",
            "CLAUDE_CODE_OAUTH_TOKEN",
            "ANTHROPIC_AUTH_TOKEN",
            "KRAAL_TOKEN",
            "GH_TOKEN",
            "AWS_SECRET_ACCESS_KEY",
            "my_service_api_key",
        ] {
            assert!(is_credential_var(std::ffi::OsStr::new(v)), "{v}");
        }
        for v in [
            "PATH",
            "HOME",
            "KRAAL_SOCKET",
            "TOKENIZERS_PARALLELISM",
            "API_KEYBOARD",
        ] {
            assert!(!is_credential_var(std::ffi::OsStr::new(v)), "{v}");
        }
    }

    #[tokio::test]
    async fn failures_carry_command_and_stderr() {
        let err = Cmd::new("sh")
            .args(["-c", "echo oops >&2; exit 3"])
            .run()
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("sh -c") && msg.contains("oops") && msg.contains('3'),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn timeouts_kill_the_child() {
        let t0 = std::time::Instant::now();
        let err = Cmd::new("sleep")
            .arg("30")
            .timeout(Duration::from_millis(200))
            .run()
            .await
            .unwrap_err();
        assert!(matches!(err, ProcessError::Timeout { .. }), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn missing_programs_are_named() {
        let err = Cmd::new("kraal-no-such-program").run().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "kraal-no-such-program is not installed (not found on PATH)"
        );
    }

    #[test]
    fn static_elf_detection() {
        // The host's own sh is dynamically linked; a text file is no ELF at all.
        assert!(!crate::is_static_elf(std::path::Path::new("/bin/sh")));
        assert!(!crate::is_static_elf(std::path::Path::new("/etc/hostname")));
        let musl = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../target/x86_64-unknown-linux-musl/release/kraal-guest"
        );
        if std::path::Path::new(musl).exists() {
            assert!(crate::is_static_elf(std::path::Path::new(musl)));
        }
    }

    #[tokio::test]
    async fn stdin_and_stdout() {
        let out = Cmd::new("cat")
            .stdin(b"hello".to_vec())
            .run()
            .await
            .unwrap();
        assert_eq!(out.stdout_str(), "hello");
    }

    #[tokio::test]
    async fn lines_stream_while_output_is_captured() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let out = Cmd::new("sh")
            .args(["-c", "printf 'a\\nb\\n'; printf 'err\\n' >&2; printf tail"])
            .lines_to(tx)
            .run()
            .await
            .unwrap();
        assert_eq!(out.stdout_str(), "a\nb\ntail");
        let mut got = Vec::new();
        while let Some(l) = rx.recv().await {
            got.push(l);
        }
        got.sort();
        assert_eq!(got, ["a", "b", "err", "tail"]);
    }
}
