//! `crownest completions SHELL` and `crownest man`: generated from the clap definition, so
//! they never drift from the parser.

use std::io::Write as _;

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::cli::{Cli, CompletionsArgs, ManArgs};
use crate::exit::Exit;

/// `crownest completions SHELL`.
pub(crate) fn completions(args: &CompletionsArgs) -> anyhow::Result<Exit> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "crownest", &mut out);
    write_stdout(&out)
}

/// `crownest man [--out DIR]`.
pub(crate) fn man(args: &ManArgs) -> anyhow::Result<Exit> {
    let cmd = Cli::command();
    match &args.out {
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .context("rendering the man page")?;
            write_stdout(&out)
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let mut pages = vec![("crownest".to_owned(), cmd.clone())];
            for sub in cmd.get_subcommands() {
                let name = format!("crownest-{}", sub.get_name());
                let bin = format!("crownest {}", sub.get_name());
                pages.push((name, sub.clone().bin_name(bin)));
            }
            for (name, page) in pages {
                let path = dir.join(format!("{name}.1"));
                let mut out = Vec::new();
                clap_mangen::Man::new(page)
                    .title(name.clone())
                    .render(&mut out)
                    .with_context(|| format!("rendering {name}"))?;
                std::fs::write(&path, out)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(Exit::Success)
        }
    }
}

fn write_stdout(bytes: &[u8]) -> anyhow::Result<Exit> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        // A closed pipe (`| head`) is not an error of ours.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing stdout"),
        _ => Ok(Exit::Success),
    }
}
