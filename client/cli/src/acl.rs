//! `tern acl ...`: the cluster's authorization rules (see docs/security.md,
//! "Authorization"). Rules take effect on brokers started with
//! `--authorization`; changing them needs `alter` on the cluster.

use anyhow::Context;
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use serde_json::json;
use tern_client::{AclRule, Admin, Client, Effect, Operation, ResourceKind, ResourcePattern};

use crate::output::{print_json, OutputArgs};

#[derive(Subcommand)]
pub(crate) enum AclCommand {
    /// Add a rule: allow or deny a principal one operation on a resource.
    #[command(after_help = "Examples:\n  \
        tern acl add --principal billing --allow --operation consume --topic-prefix pay.\n  \
        tern acl add --principal '*' --allow --operation describe --cluster\n  \
        tern acl add --principal intern --deny --operation delete --topic-prefix ''")]
    Add(RuleArgs),
    /// Remove a rule (the same flags as it was added with).
    #[command(after_help = "Example:\n  \
        tern acl remove --principal billing --allow --operation consume --topic-prefix pay.")]
    Remove(RuleArgs),
    /// List every rule.
    #[command(after_help = "Examples:\n  tern acl list\n  tern acl list --output json")]
    List {
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// Operations on the command line (the wire's, by name).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum OperationArg {
    Produce,
    Consume,
    Describe,
    Create,
    Delete,
    Alter,
    Lock,
}

impl From<OperationArg> for Operation {
    fn from(o: OperationArg) -> Operation {
        match o {
            OperationArg::Produce => Operation::Produce,
            OperationArg::Consume => Operation::Consume,
            OperationArg::Describe => Operation::Describe,
            OperationArg::Create => Operation::Create,
            OperationArg::Delete => Operation::Delete,
            OperationArg::Alter => Operation::Alter,
            OperationArg::Lock => Operation::Lock,
        }
    }
}

#[derive(Args)]
#[command(group(ArgGroup::new("effect").required(true).args(["allow", "deny"])))]
#[command(group(ArgGroup::new("resource").required(true).args([
    "topic", "topic_prefix", "group", "group_prefix", "lock", "lock_prefix", "cluster"
])))]
pub(crate) struct RuleArgs {
    /// The principal (a client certificate's name), or '*' for everyone,
    /// anonymous clients included.
    #[arg(long)]
    principal: String,
    /// Grant the operation.
    #[arg(long)]
    allow: bool,
    /// Refuse the operation whatever allows it (deny wins).
    #[arg(long)]
    deny: bool,
    /// The operation.
    #[arg(long, value_enum)]
    operation: OperationArg,
    /// One topic.
    #[arg(long)]
    topic: Option<String>,
    /// Every topic whose name starts with this ('' for all topics).
    #[arg(long)]
    topic_prefix: Option<String>,
    /// One consumer group.
    #[arg(long)]
    group: Option<String>,
    /// Every group whose name starts with this.
    #[arg(long)]
    group_prefix: Option<String>,
    /// One lock.
    #[arg(long)]
    lock: Option<String>,
    /// Every lock whose name starts with this.
    #[arg(long)]
    lock_prefix: Option<String>,
    /// The cluster (brokers, replicas, ACLs, lists).
    #[arg(long)]
    cluster: bool,
}

impl RuleArgs {
    fn rule(self) -> AclRule {
        let resource = match self {
            RuleArgs { topic: Some(t), .. } => ResourcePattern::exact(ResourceKind::Topic, t),
            RuleArgs {
                topic_prefix: Some(t),
                ..
            } => ResourcePattern::prefixed(ResourceKind::Topic, t),
            RuleArgs { group: Some(g), .. } => ResourcePattern::exact(ResourceKind::Group, g),
            RuleArgs {
                group_prefix: Some(g),
                ..
            } => ResourcePattern::prefixed(ResourceKind::Group, g),
            RuleArgs { lock: Some(l), .. } => ResourcePattern::exact(ResourceKind::Lock, l),
            RuleArgs {
                lock_prefix: Some(l),
                ..
            } => ResourcePattern::prefixed(ResourceKind::Lock, l),
            // The argument group requires exactly one resource.
            _ => ResourcePattern::cluster(),
        };
        AclRule {
            principal: self.principal,
            resource,
            operation: self.operation.into(),
            effect: if self.deny {
                Effect::Deny
            } else {
                Effect::Allow
            },
        }
    }
}

fn effect_name(e: Effect) -> &'static str {
    match e {
        Effect::Allow => "allow",
        Effect::Deny => "deny",
    }
}

pub(crate) async fn run(client: Client, command: AclCommand) -> anyhow::Result<()> {
    let admin = Admin::new(client);
    match command {
        AclCommand::Add(args) => {
            let rule = args.rule();
            admin
                .add_acl(rule.clone())
                .await
                .with_context(|| format!("add ACL rule: {rule}"))?;
            eprintln!("added: {rule}");
        }
        AclCommand::Remove(args) => {
            let rule = args.rule();
            admin
                .remove_acl(rule.clone())
                .await
                .with_context(|| format!("remove ACL rule: {rule}"))?;
            eprintln!("removed: {rule}");
        }
        AclCommand::List { output } => {
            let rules = admin.list_acls().await.context("list ACL rules")?;
            if !output.json() {
                println!("principal\teffect\toperation\tresource\tpattern\tname");
            }
            for r in rules {
                let pattern = match (r.resource.kind, r.resource.prefix) {
                    (ResourceKind::Cluster, _) => "-",
                    (_, true) => "prefix",
                    (_, false) => "exact",
                };
                if output.json() {
                    print_json(&json!({
                        "principal": r.principal,
                        "effect": effect_name(r.effect),
                        "operation": r.operation.name(),
                        "resource": r.resource.kind.name(),
                        "pattern": pattern,
                        "name": r.resource.name,
                    }))?;
                } else {
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}",
                        r.principal,
                        effect_name(r.effect),
                        r.operation.name(),
                        r.resource.kind.name(),
                        pattern,
                        r.resource.name
                    );
                }
            }
        }
    }
    Ok(())
}
