//! One file per verb, each with its arguments and `run(args, &Ctx)`.

pub mod cache;
pub mod completions;
pub mod containerd;
pub mod df;
pub mod diff;
pub mod front;
pub mod hosts;
pub mod import;
pub mod index;
pub mod info;
pub mod init;
pub mod inspect;
pub mod list;
pub mod login;
pub mod logout;
pub mod mount;
pub mod pack;
pub mod pull;
pub mod push;
pub mod remove;
pub mod serve;
pub mod tag;
pub mod umount;
pub mod unpack;
pub mod version;

use anyhow::Result;
use kitsnap_core::reference::Reference;

use crate::cli::Command;
use crate::settings::Ctx;

pub fn run(command: Command, ctx: &Ctx) -> Result<()> {
    match command {
        Command::Init(a) => init::run(a, ctx),
        Command::Pack(a) => pack::run(a, ctx),
        Command::Import(a) => import::run(a, ctx),
        Command::Cache(a) => cache::run(a, ctx),
        Command::List(a) => list::run(a, ctx),
        Command::Inspect(a) => inspect::run(a, ctx),
        Command::Info(a) => info::run(a, ctx),
        Command::Diff(a) => diff::run(a, ctx),
        Command::Tag(a) => tag::run(a, ctx),
        Command::Index(a) => index::run(a, ctx),
        Command::Remove(a) => remove::run(a, ctx),
        Command::Unpack(a) => unpack::run(a, ctx),
        Command::Push(a) => push::run(a, ctx),
        Command::Pull(a) => pull::run(a, ctx),
        Command::Mount(a) => mount::run(a, ctx),
        Command::Umount(a) => umount::run(a, ctx),
        Command::Df(a) => df::run(a, ctx),
        Command::Login(a) => login::run(a, ctx),
        Command::Logout(a) => logout::run(a, ctx),
        Command::Serve(a) => serve::run(a, ctx),
        Command::Hosts(a) => hosts::run(a, ctx),
        Command::Containerd(a) => containerd::run(a, ctx),
        Command::Front(a) => front::run(a, ctx),
        Command::Version(a) => version::run(a),
        Command::Docs(c) => completions::run(c),
    }
}

pub fn parse_ref(s: &str) -> Result<Reference> {
    s.parse::<Reference>().map_err(anyhow::Error::from)
}
