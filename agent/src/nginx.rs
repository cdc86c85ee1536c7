//! `nginx -t` after a restore of nginx configuration, and `nginx -s reload` when asked and the
//! test passed. The command, `-c` and `-p` come from the source config (`nginx_command`,
//! `nginx_conf`, `nginx_prefix`), so a test can use a private nginx.

use std::process::{Command, Stdio};

use serde::Serialize;

use crate::config::NginxCheck;

/// The outcome of `nginx -t` (and of the reload, when asked).
#[derive(Clone, Debug, Serialize)]
pub struct NginxReport {
    pub test_passed: bool,
    pub test_output: String,
    pub reloaded: bool,
    pub reload_output: String,
}

fn command(c: &NginxCheck) -> Command {
    let mut cmd = Command::new(&c.command);
    if let Some(p) = &c.prefix {
        cmd.arg("-p").arg(p);
    }
    if let Some(f) = &c.conf {
        cmd.arg("-c").arg(f);
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn run(mut cmd: Command) -> (bool, String) {
    match cmd.output() {
        Ok(o) => {
            let mut text = String::from_utf8_lossy(&o.stderr).trim().to_owned();
            let out = String::from_utf8_lossy(&o.stdout);
            if !out.trim().is_empty() {
                text = format!("{}\n{text}", out.trim());
            }
            (o.status.success(), text)
        }
        Err(e) => (false, format!("cannot run {:?}: {e}", cmd.get_program())),
    }
}

/// Runs `nginx -t`, then `nginx -s reload` if `reload` and the test passed.
pub fn check(c: &NginxCheck, reload: bool) -> NginxReport {
    let mut t = command(c);
    t.arg("-t");
    let (test_passed, test_output) = run(t);
    let (mut reloaded, mut reload_output) = (false, String::new());
    if reload && test_passed {
        let mut r = command(c);
        r.args(["-s", "reload"]);
        (reloaded, reload_output) = run(r);
    }
    NginxReport {
        test_passed,
        test_output,
        reloaded,
        reload_output,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_nginx_fails_the_test_with_a_reason() {
        let r = check(
            &NginxCheck {
                command: "/nonexistent/nginx".into(),
                conf: None,
                prefix: None,
            },
            true,
        );
        assert!(!r.test_passed && !r.reloaded);
        assert!(r.test_output.contains("cannot run"), "{}", r.test_output);
    }
}
