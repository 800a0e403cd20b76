//! The manual pages: each command's page from the CLI definition (clap's
//! sections) with EXAMPLES, FILES, ENVIRONMENT, EXIT STATUS and SEE ALSO
//! added, and the policy format's page (section 5) made from
//! docs/policy-reference.md, so the page and the reference never differ.
//! Pure text; the caller writes it.

use std::io::Write;

/// Escapes text for a roff text line.
fn esc(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') { format!("\\&{s}") } else { s }
}

/// Writes `cmd`'s page under the title `name`.
pub fn render(cmd: &clap::Command, name: &str, out: &mut dyn Write) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone()).title(name);
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(out)?;
    }
    if cmd.get_subcommands().any(|c| !c.is_hide_set()) {
        man.render_subcommands_section(out)?;
    }
    let mut text = String::new();
    if let Some(ex) = cmd.get_after_help().map(|h| h.to_string()) {
        text += &examples(&ex);
    }
    let top = name == "nsproxy";
    if top {
        text += FILES;
        text += ENVIRONMENT;
    }
    text += EXIT_STATUS;
    text += &see_also(name);
    out.write_all(text.as_bytes())?;
    if cmd.get_version().is_some() {
        man.render_version_section(out)?;
    }
    Ok(())
}

/// `Examples:` lines (`  command  # what`) as an EXAMPLES section.
fn examples(help: &str) -> String {
    let mut o = String::from(".SH EXAMPLES\n");
    for line in help.lines().skip_while(|l| !l.starts_with("Examples:")).skip(1) {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (command, what) = match line.split_once("  #") {
            Some((c, w)) => (c.trim(), Some(w.trim())),
            None => (line, None),
        };
        o += ".TP\n";
        o += &format!("\\fB{}\\fR\n", esc(command));
        o += &format!("{}\n", esc(what.unwrap_or("")));
    }
    o
}

const FILES: &str = r".SH FILES
.TP
\fB/etc/nsproxy/policies\fR
The policy: a YAML file or a directory of *.yaml files (\fB\-\-policies\fR); see \fBnsproxy\-policy\fR(5).
.TP
\fB/etc/nsproxy/secrets\fR
Password, token and Fernet key files: root\-owned, mode 0600 or 0400.
.TP
\fB/run/nsproxy/\fIACCOUNT\fB/\fR
The running daemon: daemon.pid, daemon.log, ctl.sock (the control socket), state.json, stats.json, the fake\-IP table.
.TP
\fB/var/lib/nsproxy/\fIACCOUNT\fB/pool.json\fR
The pool's state: burns, last checks and egress IPs; survives restarts and reboots.
.TP
\fB/run/netns/nsp\-\fIACCOUNT\fR, \fB/etc/netns/nsp\-\fIACCOUNT\fB/\fR
The account's network namespace and the resolv.conf, hosts and nsswitch.conf that programs in it see.
.TP
\fB/usr/lib/systemd/system/nsproxy@.service\fR
One account per instance: \fBsystemctl enable \-\-now nsproxy@account\-a\fR.
";

const ENVIRONMENT: &str = r".SH ENVIRONMENT
.TP
\fBNSPROXY_ACCOUNTS__\fIACCOUNT\fB__\fIFIELD\fR
Overrides a policy field of one account (upper case, \fB__\fR between levels, \fB_\fR for \fB\-\fR in the account's name), e.g. \fBNSPROXY_ACCOUNTS__ACCOUNT_A__DNS__MODE=tcp\fR; \fB\-\-set\fR wins over it. Unknown fields are refused. \fBexec\fR ignores them and passes none to the program.
.TP
\fBNOTIFY_SOCKET\fR, \fBWATCHDOG_USEC\fR, \fBWATCHDOG_PID\fR
Set by systemd for \fBup \-\-foreground\fR: READY=1 once the namespace's only way out is the proxy, STATUS= with the active proxy and its egress IP, WATCHDOG=1 while the data plane runs.
.TP
\fBSUDO_UID\fR, \fBSUDO_USER\fR
\fBexec\fR without \fB\-\-user\fR runs the program as the sudo caller; a sudo caller may only pick itself.
.TP
A credential's \fB*_env\fR variable
Read by the daemon at start, then wiped from its environment; never passed to programs.
";

const EXIT_STATUS: &str = r".SH EXIT STATUS
.TP
\fB0\fR
Done.
.TP
\fB1\fR
A failure: the system, a proxy, the daemon (the message names the account and the cause).
.TP
\fB2\fR
A usage error: an unknown command or option, or a bad argument.
.TP
\fB3\fR
The policy or a credential is invalid (a file, a field, a secret; the message names the file, its line and the field). Starting again will not help: the unit lists it in \fBRestartPreventExitStatus=\fR.
.TP
\fB4\fR
\fBup\fR: the account is up and fail\-closed, but no proxy passed its check; the daemon keeps checking and new connections are refused until one passes.
.TP
\fB126\fR, \fB127\fR
\fBexec\fR: the program cannot be executed, or is not found; otherwise \fBexec\fR exits with the program's status.
";

fn see_also(name: &str) -> String {
    let mut pages = vec!["nsproxy(1)", "nsproxy-policy(5)", "systemd.exec(5)", "ip-netns(8)"];
    if name != "nsproxy" {
        pages.retain(|p| *p != "systemd.exec(5)");
    }
    let pages: Vec<String> =
        pages.iter().filter_map(|p| p.split_once('(')).map(|(n, s)| format!("\\fB{}\\fR({s}", esc(n))).collect();
    format!(
        ".SH SEE ALSO\n{}\n.PP\nThe documentation in /usr/share/doc/nsproxy: operations.md, policy\\-reference.md, troubleshooting.md, runbooks.md.\n",
        pages.join(", ")
    )
}

/// The policy format's page, nsproxy-policy(5), from the policy reference.
pub fn policy_page() -> String {
    let version = env!("CARGO_PKG_VERSION");
    let mut o = format!(
        ".TH nsproxy-policy 5 \"\" \"nsproxy {version}\" \"File Formats\"\n.SH NAME\nnsproxy\\-policy \\- the YAML policy of nsproxy's accounts\n.SH DESCRIPTION\n"
    );
    o += &markdown(include_str!("../docs/policy-reference.md"));
    o += ".SH SEE ALSO\n\\fBnsproxy\\fR(1), \\fBnsproxy\\-policy\\-check\\fR(1)\n";
    o
}

/// Inline markdown: `code` bold, [text](link) as its text.
fn inline(s: &str) -> String {
    let mut plain = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('[') {
        plain += &rest[..i];
        let after = &rest[i + 1..];
        match after.find("](").and_then(|j| after[j..].find(')').map(|k| (j, j + k))) {
            Some((j, k)) => {
                plain += &after[..j];
                rest = &after[k + 1..];
            }
            None => {
                plain.push('[');
                rest = after;
            }
        }
    }
    plain += rest;
    let mut o = String::new();
    for (i, part) in esc(&plain).split('`').enumerate() {
        if i % 2 == 1 {
            o += &format!("\\fB{part}\\fR");
        } else {
            o += part;
        }
    }
    o
}

/// The subset of markdown the reference uses: headings, paragraphs,
/// fenced code, tables (a row per field) and lists.
fn markdown(md: &str) -> String {
    let mut o = String::new();
    let mut code = false;
    let mut para = false;
    for line in md.lines() {
        if line.starts_with("```") {
            o += if code { ".fi\n.RE\n" } else { ".PP\n.RS 2\n.nf\n" };
            code = !code;
            para = false;
            continue;
        }
        if code {
            o += &format!("{}\n", esc(line));
            continue;
        }
        let t = line.trim();
        if t.is_empty() {
            para = false;
            continue;
        }
        if let Some(h) = t.strip_prefix("### ") {
            o += &format!(".SS \"{}\"\n", inline(h).replace('"', ""));
            para = false;
        } else if let Some(h) = t.strip_prefix("## ") {
            o += &format!(".SH \"{}\"\n", inline(h).to_uppercase().replace('"', ""));
            para = false;
        } else if t.starts_with("# ") {
            continue;
        } else if t.starts_with('|') {
            let cells: Vec<&str> = t.trim_matches('|').split('|').map(str::trim).collect();
            if cells.iter().all(|c| c.chars().all(|ch| ch == '-' || ch == ':' || ch == ' ')) {
                continue;
            }
            let (head, rest) = cells.split_first().map(|(h, r)| (*h, r)).unwrap_or(("", &[]));
            o += &format!(".TP\n{}\n{}\n", inline(head), inline(&rest.join(" \u{2014} ")));
            para = false;
        } else if let Some(item) = t.strip_prefix("- ") {
            o += &format!(".IP \\(bu 2\n{}\n", inline(item));
            para = true;
        } else {
            if !para {
                o += ".PP\n";
                para = true;
            }
            o += &format!("{}\n", inline(t));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_becomes_roff() {
        let r = markdown(
            "# T\n\nSome `field` text, see [the guide](x.md).\n.dot line\n\n## Section\n\n| field | default | what |\n| --- | --- | --- |\n| `a.b` | 5 | does -x |\n\n```yaml\nkey: -1\n```\n- item\n",
        );
        assert!(r.contains(".PP\nSome \\fBfield\\fR text, see the guide.\n\\&.dot line\n"), "{r}");
        assert!(r.contains(".SH \"SECTION\"\n"), "{r}");
        assert!(r.contains(".TP\n\\fBa.b\\fR\n5 \u{2014} does \\-x\n"), "{r}");
        assert!(r.contains(".nf\nkey: \\-1\n.fi\n"), "{r}");
        assert!(r.contains(".IP \\(bu 2\nitem\n"), "{r}");
        assert!(!r.contains("| ---"), "{r}");
    }

    #[test]
    fn examples_become_a_section() {
        let e = examples("Examples:\n  sudo nsproxy up a     # start it\n  nsproxy status\n");
        assert_eq!(e, ".SH EXAMPLES\n.TP\n\\fBsudo nsproxy up a\\fR\nstart it\n.TP\n\\fBnsproxy status\\fR\n\n");
    }
}
