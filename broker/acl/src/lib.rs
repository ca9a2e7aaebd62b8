//! Authorization rules (ACLs) and the decision they make for one request.
//!
//! A rule says that a **principal** (an exact name, or `*` for anyone,
//! anonymous connections included) is **allowed** or **denied** one
//! **operation** on a **resource**: a topic, consumer group or lock named
//! exactly or by prefix, or the cluster itself. The decision for
//! `(principal, resource, operation)`:
//!
//! 1. a super-user is always allowed;
//! 2. any matching deny rule denies (deny wins over allow);
//! 3. any matching allow rule allows;
//! 4. otherwise it is denied — no rule, no access.
//!
//! `Describe` is implied by every other operation on the same resource
//! (whoever may produce to a topic may see it in metadata, as in Kafka);
//! only a deny of `Describe` itself takes it away.
//!
//! [`AclSet`] indexes the rules by resource name (exact names in a hash map,
//! prefixes in a hash map probed once per prefix length of the name asked
//! about) and, inside a resource, by principal, each holding bit masks of
//! allowed and denied operations: a check costs a few hash lookups whatever
//! the number of rules, never a scan. At most [`RULES_MAX`] rules are held.
//!
//! This crate owns the rule types, their validation and the decision. It
//! must never do I/O, know about the wire or Raft, or learn a principal
//! from anything but its caller (the broker reads it from the connection's
//! proven session).

#![warn(missing_docs)]

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Most rules one cluster holds; adding one more is refused with
/// [`AclError::TooManyRules`].
pub const RULES_MAX: usize = 100_000;
/// Longest principal name in a rule.
pub const PRINCIPAL_BYTES_MAX: usize = 255;
/// Longest resource name or prefix in a rule (topic, group and lock names
/// are at most 249 bytes).
pub const RESOURCE_NAME_BYTES_MAX: usize = 249;
/// The principal that matches everyone, anonymous connections included.
pub const ANY_PRINCIPAL: &str = "*";

/// What a request does to a resource. Numbers are stable (wire and log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u8)]
pub enum Operation {
    /// Append records to a topic.
    Produce = 0,
    /// Read a topic, look up its offsets; join, heartbeat, commit in a group.
    Consume = 1,
    /// See a topic, group or the cluster's lists.
    Describe = 2,
    /// Create a topic.
    Create = 3,
    /// Delete a topic.
    Delete = 4,
    /// Change the cluster: brokers, replicas, ACLs.
    Alter = 5,
    /// Acquire, renew and release a lock.
    Lock = 6,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 7] = [
        Operation::Produce,
        Operation::Consume,
        Operation::Describe,
        Operation::Create,
        Operation::Delete,
        Operation::Alter,
        Operation::Lock,
    ];

    /// The operation with this number.
    pub fn from_u8(v: u8) -> Option<Operation> {
        Operation::ALL.into_iter().find(|o| *o as u8 == v)
    }

    /// Stable lower-case name (metrics labels, logs, the CLI).
    pub fn name(self) -> &'static str {
        match self {
            Operation::Produce => "produce",
            Operation::Consume => "consume",
            Operation::Describe => "describe",
            Operation::Create => "create",
            Operation::Delete => "delete",
            Operation::Alter => "alter",
            Operation::Lock => "lock",
        }
    }

    /// The operation named `name` (as [`Operation::name`] spells it).
    pub fn from_name(name: &str) -> Option<Operation> {
        Operation::ALL
            .into_iter()
            .find(|o| o.name().eq_ignore_ascii_case(name))
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// Allow bits that grant this operation: `Describe` is implied by all.
    fn granted_by(self) -> u8 {
        match self {
            Operation::Describe => u8::MAX,
            other => other.bit(),
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The kinds of resource a rule names. Numbers are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u8)]
pub enum ResourceKind {
    /// A topic.
    Topic = 0,
    /// A consumer group.
    Group = 1,
    /// A lock.
    Lock = 2,
    /// The cluster (brokers, replica placement, ACLs, lists).
    Cluster = 3,
}

impl ResourceKind {
    /// The kind with this number.
    pub fn from_u8(v: u8) -> Option<ResourceKind> {
        [
            ResourceKind::Topic,
            ResourceKind::Group,
            ResourceKind::Lock,
            ResourceKind::Cluster,
        ]
        .into_iter()
        .find(|k| *k as u8 == v)
    }

    /// Stable lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            ResourceKind::Topic => "topic",
            ResourceKind::Group => "group",
            ResourceKind::Lock => "lock",
            ResourceKind::Cluster => "cluster",
        }
    }
}

/// The resources a rule can name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourcePattern {
    /// Kind.
    pub kind: ResourceKind,
    /// `true`: every resource whose name starts with `name`; `false`: the
    /// resource named exactly `name`. Both are `false`/empty for the cluster.
    pub prefix: bool,
    /// Name or prefix (empty for the cluster; an empty prefix matches every
    /// resource of the kind).
    pub name: String,
}

impl ResourcePattern {
    /// The cluster.
    pub fn cluster() -> ResourcePattern {
        ResourcePattern {
            kind: ResourceKind::Cluster,
            prefix: false,
            name: String::new(),
        }
    }

    /// Exactly the resource `name` of `kind`.
    pub fn exact(kind: ResourceKind, name: impl Into<String>) -> ResourcePattern {
        ResourcePattern {
            kind,
            prefix: false,
            name: name.into(),
        }
    }

    /// Every resource of `kind` whose name starts with `prefix`.
    pub fn prefixed(kind: ResourceKind, prefix: impl Into<String>) -> ResourcePattern {
        ResourcePattern {
            kind,
            prefix: true,
            name: prefix.into(),
        }
    }
}

impl std::fmt::Display for ResourcePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.kind, self.prefix) {
            (ResourceKind::Cluster, _) => f.write_str("cluster"),
            (k, false) => write!(f, "{} {:?}", k.name(), self.name),
            (k, true) => write!(f, "{} prefix {:?}", k.name(), self.name),
        }
    }
}

/// Whether a rule grants or takes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u8)]
pub enum Effect {
    /// Grants the operation.
    Allow = 0,
    /// Refuses the operation, whatever allows it.
    Deny = 1,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AclRule {
    /// A principal's exact name, or [`ANY_PRINCIPAL`].
    pub principal: String,
    /// What it applies to.
    pub resource: ResourcePattern,
    /// The operation.
    pub operation: Operation,
    /// Allow or deny.
    pub effect: Effect,
}

impl AclRule {
    /// Checks the rule's fields: a principal of 1..=[`PRINCIPAL_BYTES_MAX`]
    /// bytes, a name within [`RESOURCE_NAME_BYTES_MAX`] (non-empty when
    /// exact, empty for the cluster), no control characters.
    pub fn validate(&self) -> Result<(), AclError> {
        let invalid = |reason: String| Err(AclError::InvalidRule { reason });
        if self.principal.is_empty() || self.principal.len() > PRINCIPAL_BYTES_MAX {
            return invalid(format!(
                "the principal must be 1..={PRINCIPAL_BYTES_MAX} bytes"
            ));
        }
        if self.principal.chars().any(char::is_control)
            || self.resource.name.chars().any(char::is_control)
        {
            return invalid("names must not contain control characters".into());
        }
        let r = &self.resource;
        if r.kind == ResourceKind::Cluster {
            if r.prefix || !r.name.is_empty() {
                return invalid("a cluster rule names no resource".into());
            }
            return Ok(());
        }
        if r.name.len() > RESOURCE_NAME_BYTES_MAX {
            return invalid(format!(
                "a {} name is at most {RESOURCE_NAME_BYTES_MAX} bytes",
                r.kind.name()
            ));
        }
        if !r.prefix && r.name.is_empty() {
            return invalid(format!(
                "an exact {} name is not empty (use an empty prefix for every {0})",
                r.kind.name()
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for AclRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:?} {} on {}",
            match self.effect {
                Effect::Allow => "allow",
                Effect::Deny => "deny",
            },
            self.principal,
            self.operation,
            self.resource
        )
    }
}

/// Why a rule was refused.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum AclError {
    /// The set already holds [`RULES_MAX`] rules.
    #[error("the cluster holds {limit} ACL rules, the most it may (acl_rules_max)")]
    TooManyRules {
        /// The limit.
        limit: usize,
    },
    /// A field of the rule is out of its domain.
    #[error("invalid ACL rule: {reason}")]
    InvalidRule {
        /// What is wrong.
        reason: String,
    },
}

/// A resource a request touches (borrowed: checks allocate nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// A topic.
    Topic(&'a str),
    /// A consumer group.
    Group(&'a str),
    /// A lock.
    Lock(&'a str),
    /// The cluster.
    Cluster,
}

impl Resource<'_> {
    /// Kind.
    pub fn kind(&self) -> ResourceKind {
        match self {
            Resource::Topic(_) => ResourceKind::Topic,
            Resource::Group(_) => ResourceKind::Group,
            Resource::Lock(_) => ResourceKind::Lock,
            Resource::Cluster => ResourceKind::Cluster,
        }
    }

    /// Name (empty for the cluster).
    pub fn name(&self) -> &str {
        match self {
            Resource::Topic(n) | Resource::Group(n) | Resource::Lock(n) => n,
            Resource::Cluster => "",
        }
    }
}

impl std::fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resource::Cluster => f.write_str("cluster"),
            r => write!(f, "{} {:?}", r.kind().name(), r.name()),
        }
    }
}

/// The outcome of a check, with its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The principal is a super-user.
    SuperUser,
    /// An allow rule matched and no deny rule did.
    Allowed,
    /// A deny rule matched.
    DeniedByRule,
    /// No allow rule matched.
    NoMatchingAllow,
}

impl Decision {
    /// Whether the request may go on.
    pub fn is_allowed(self) -> bool {
        matches!(self, Decision::SuperUser | Decision::Allowed)
    }
}

/// Allowed and denied operations (bit masks) of the principals of one
/// resource pattern.
#[derive(Debug, Clone, Default)]
struct Grants {
    /// Masks of `*` rules.
    any: Masks,
    /// Masks per named principal.
    named: HashMap<String, Masks>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Masks {
    allow: u8,
    deny: u8,
}

impl Masks {
    fn or(self, other: Masks) -> Masks {
        Masks {
            allow: self.allow | other.allow,
            deny: self.deny | other.deny,
        }
    }
}

impl Grants {
    fn masks(&self, principal: Option<&str>) -> Masks {
        let named = principal
            .and_then(|p| self.named.get(p))
            .copied()
            .unwrap_or_default();
        self.any.or(named)
    }
}

/// Every rule, indexed for checks.
#[derive(Debug, Clone, Default)]
pub struct AclSet {
    /// The rules as added (ordered, for listing and persistence).
    rules: BTreeSet<AclRule>,
    /// Exact patterns: (kind, name) → grants.
    exact: [HashMap<String, Grants>; 4],
    /// Prefix patterns: (kind, prefix) → grants.
    prefixes: [HashMap<String, Grants>; 4],
    /// Per kind, how many prefixes there are of each length: the longest
    /// bounds how many prefixes of a name a check probes, and it is kept up
    /// to date in O(log n) per change (never by scanning every prefix).
    prefix_lens: [std::collections::BTreeMap<usize, usize>; 4],
}

impl AclSet {
    /// An empty set: every check of a non-super-user is denied.
    pub fn new() -> AclSet {
        AclSet::default()
    }

    /// A set of `rules` (as persisted); refuses invalid rules and more than
    /// [`RULES_MAX`].
    pub fn from_rules(rules: impl IntoIterator<Item = AclRule>) -> Result<AclSet, AclError> {
        let mut set = AclSet::new();
        for r in rules {
            set.add(r)?;
        }
        Ok(set)
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `rule` is in the set.
    pub fn contains(&self, rule: &AclRule) -> bool {
        self.rules.contains(rule)
    }

    /// Every rule, in a stable order.
    pub fn rules(&self) -> impl Iterator<Item = &AclRule> {
        self.rules.iter()
    }

    /// Adds a rule; `Ok(false)` when it was there already.
    pub fn add(&mut self, rule: AclRule) -> Result<bool, AclError> {
        rule.validate()?;
        if self.rules.contains(&rule) {
            return Ok(false);
        }
        if self.rules.len() >= RULES_MAX {
            return Err(AclError::TooManyRules { limit: RULES_MAX });
        }
        self.rules.insert(rule.clone());
        self.reindex(&rule.resource, &rule.principal);
        Ok(true)
    }

    /// Removes a rule; `false` when there was no such rule.
    pub fn remove(&mut self, rule: &AclRule) -> bool {
        if !self.rules.remove(rule) {
            return false;
        }
        self.reindex(&rule.resource, &rule.principal);
        true
    }

    /// Recomputes the masks of one (pattern, principal) from the rules —
    /// a range of the ordered set, not all of it.
    fn reindex(&mut self, pattern: &ResourcePattern, principal: &str) {
        let lo = AclRule {
            principal: principal.to_string(),
            resource: pattern.clone(),
            operation: Operation::Produce,
            effect: Effect::Allow,
        };
        let mut masks = Masks::default();
        for r in self.rules.range(lo..) {
            if r.principal != principal || r.resource != *pattern {
                break;
            }
            match r.effect {
                Effect::Allow => masks.allow |= r.operation.bit(),
                Effect::Deny => masks.deny |= r.operation.bit(),
            }
        }
        let k = pattern.kind as usize;
        let map = if pattern.prefix {
            &mut self.prefixes[k]
        } else {
            &mut self.exact[k]
        };
        let empty = masks.allow == 0 && masks.deny == 0;
        let existed = map.contains_key(&pattern.name);
        let grants = map.entry(pattern.name.clone()).or_default();
        if principal == ANY_PRINCIPAL {
            grants.any = masks;
        } else if empty {
            grants.named.remove(principal);
        } else {
            grants.named.insert(principal.to_string(), masks);
        }
        let gone = grants.named.is_empty() && grants.any.allow == 0 && grants.any.deny == 0;
        if gone {
            map.remove(&pattern.name);
        }
        if pattern.prefix {
            let lens = &mut self.prefix_lens[k];
            let len = pattern.name.len();
            if gone && existed {
                if let Some(n) = lens.get_mut(&len) {
                    *n -= 1;
                    if *n == 0 {
                        lens.remove(&len);
                    }
                }
            } else if !gone && !existed {
                *lens.entry(len).or_default() += 1;
            }
        }
    }

    /// What the rules (without super-users) say about `principal` (`None`:
    /// anonymous) doing `operation` on `resource`.
    pub fn check(
        &self,
        principal: Option<&str>,
        resource: Resource<'_>,
        operation: Operation,
    ) -> Decision {
        let k = resource.kind() as usize;
        let name = resource.name();
        let mut masks = self.exact[k]
            .get(name)
            .map(|g| g.masks(principal))
            .unwrap_or_default();
        if !self.prefixes[k].is_empty() {
            let longest_prefix = self.prefix_lens[k].keys().next_back().copied();
            let longest = name.len().min(longest_prefix.unwrap_or(0));
            for end in (0..=longest).filter(|e| name.is_char_boundary(*e)) {
                if let Some(g) = self.prefixes[k].get(&name[..end]) {
                    masks = masks.or(g.masks(principal));
                }
            }
        }
        if masks.deny & operation.bit() != 0 {
            Decision::DeniedByRule
        } else if masks.allow & operation.granted_by() != 0 {
            Decision::Allowed
        } else {
            Decision::NoMatchingAllow
        }
    }
}

/// The rules plus the super-users named in the broker's configuration.
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    super_users: HashSet<String>,
}

impl Authorizer {
    /// An authorizer for which `super_users` are always allowed.
    pub fn new(super_users: impl IntoIterator<Item = String>) -> Authorizer {
        Authorizer {
            super_users: super_users.into_iter().collect(),
        }
    }

    /// Whether `principal` is a super-user.
    pub fn is_super_user(&self, principal: Option<&str>) -> bool {
        principal.is_some_and(|p| self.super_users.contains(p))
    }

    /// The decision for `principal` doing `operation` on `resource`.
    pub fn authorize(
        &self,
        acls: &AclSet,
        principal: Option<&str>,
        resource: Resource<'_>,
        operation: Operation,
    ) -> Decision {
        if self.is_super_user(principal) {
            return Decision::SuperUser;
        }
        acls.check(principal, resource, operation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(principal: &str, resource: ResourcePattern, op: Operation, effect: Effect) -> AclRule {
        AclRule {
            principal: principal.into(),
            resource,
            operation: op,
            effect,
        }
    }

    fn topic(name: &str) -> ResourcePattern {
        ResourcePattern::exact(ResourceKind::Topic, name)
    }

    #[test]
    fn no_rule_means_denied() {
        let acls = AclSet::new();
        let d = acls.check(Some("alice"), Resource::Topic("t"), Operation::Produce);
        assert_eq!(d, Decision::NoMatchingAllow);
        assert!(!d.is_allowed());
        assert!(!acls
            .check(None, Resource::Cluster, Operation::Describe)
            .is_allowed());
    }

    #[test]
    fn an_exact_rule_allows_only_its_principal_resource_and_operation() {
        let mut acls = AclSet::new();
        acls.add(rule(
            "alice",
            topic("orders"),
            Operation::Produce,
            Effect::Allow,
        ))
        .unwrap();
        assert_eq!(
            acls.check(Some("alice"), Resource::Topic("orders"), Operation::Produce),
            Decision::Allowed
        );
        for (p, r, o) in [
            (Some("bob"), Resource::Topic("orders"), Operation::Produce),
            (None, Resource::Topic("orders"), Operation::Produce),
            (
                Some("alice"),
                Resource::Topic("orders2"),
                Operation::Produce,
            ),
            (Some("alice"), Resource::Topic("order"), Operation::Produce),
            (Some("alice"), Resource::Topic("orders"), Operation::Consume),
            (Some("alice"), Resource::Group("orders"), Operation::Produce),
        ] {
            assert!(!acls.check(p, r, o).is_allowed(), "{p:?} {r} {o}");
        }
    }

    #[test]
    fn a_prefix_rule_matches_names_starting_with_it_only() {
        let mut acls = AclSet::new();
        let pattern = ResourcePattern::prefixed(ResourceKind::Topic, "pay.");
        acls.add(rule("alice", pattern, Operation::Consume, Effect::Allow))
            .unwrap();
        for name in ["pay.", "pay.eu", "pay.eu.refunds"] {
            assert!(acls
                .check(Some("alice"), Resource::Topic(name), Operation::Consume)
                .is_allowed());
        }
        for name in ["pay", "pa", "xpay.eu", "PAY.eu", ""] {
            assert!(!acls
                .check(Some("alice"), Resource::Topic(name), Operation::Consume)
                .is_allowed());
        }
        // An empty prefix is every topic.
        acls.add(rule(
            "bob",
            ResourcePattern::prefixed(ResourceKind::Topic, ""),
            Operation::Produce,
            Effect::Allow,
        ))
        .unwrap();
        assert!(acls
            .check(Some("bob"), Resource::Topic("anything"), Operation::Produce)
            .is_allowed());
        assert!(!acls
            .check(Some("bob"), Resource::Lock("anything"), Operation::Produce)
            .is_allowed());
    }

    #[test]
    fn deny_wins_over_allow_from_any_rule() {
        let mut acls = AclSet::new();
        acls.add(rule(
            "*",
            ResourcePattern::prefixed(ResourceKind::Topic, ""),
            Operation::Consume,
            Effect::Allow,
        ))
        .unwrap();
        acls.add(rule(
            "mallory",
            topic("secrets"),
            Operation::Consume,
            Effect::Allow,
        ))
        .unwrap();
        acls.add(rule(
            "mallory",
            ResourcePattern::prefixed(ResourceKind::Topic, "sec"),
            Operation::Consume,
            Effect::Deny,
        ))
        .unwrap();
        assert_eq!(
            acls.check(
                Some("mallory"),
                Resource::Topic("secrets"),
                Operation::Consume
            ),
            Decision::DeniedByRule
        );
        assert!(acls
            .check(
                Some("mallory"),
                Resource::Topic("public"),
                Operation::Consume
            )
            .is_allowed());
        assert!(acls
            .check(
                Some("alice"),
                Resource::Topic("secrets"),
                Operation::Consume
            )
            .is_allowed());
        // A deny for everyone beats a named allow.
        acls.add(rule("*", topic("public"), Operation::Consume, Effect::Deny))
            .unwrap();
        assert_eq!(
            acls.check(Some("alice"), Resource::Topic("public"), Operation::Consume),
            Decision::DeniedByRule
        );
    }

    #[test]
    fn the_wildcard_principal_matches_everyone_including_anonymous() {
        let mut acls = AclSet::new();
        acls.add(rule("*", topic("news"), Operation::Consume, Effect::Allow))
            .unwrap();
        assert!(acls
            .check(None, Resource::Topic("news"), Operation::Consume)
            .is_allowed());
        assert!(acls
            .check(Some("anyone"), Resource::Topic("news"), Operation::Consume)
            .is_allowed());
    }

    #[test]
    fn describe_is_implied_by_other_operations_but_can_be_denied() {
        let mut acls = AclSet::new();
        acls.add(rule("alice", topic("t"), Operation::Produce, Effect::Allow))
            .unwrap();
        assert!(acls
            .check(Some("alice"), Resource::Topic("t"), Operation::Describe)
            .is_allowed());
        assert!(!acls
            .check(Some("alice"), Resource::Topic("t"), Operation::Delete)
            .is_allowed());
        acls.add(rule("alice", topic("t"), Operation::Describe, Effect::Deny))
            .unwrap();
        assert!(!acls
            .check(Some("alice"), Resource::Topic("t"), Operation::Describe)
            .is_allowed());
        // A denied Describe does not take away Produce.
        assert!(acls
            .check(Some("alice"), Resource::Topic("t"), Operation::Produce)
            .is_allowed());
    }

    #[test]
    fn removing_a_rule_takes_its_grant_away_and_keeps_the_others() {
        let mut acls = AclSet::new();
        let produce = rule("alice", topic("t"), Operation::Produce, Effect::Allow);
        let consume = rule("alice", topic("t"), Operation::Consume, Effect::Allow);
        assert!(acls.add(produce.clone()).unwrap());
        assert!(!acls.add(produce.clone()).unwrap(), "already there");
        acls.add(consume).unwrap();
        assert!(acls.remove(&produce));
        assert!(!acls.remove(&produce));
        assert!(!acls
            .check(Some("alice"), Resource::Topic("t"), Operation::Produce)
            .is_allowed());
        assert!(acls
            .check(Some("alice"), Resource::Topic("t"), Operation::Consume)
            .is_allowed());
        assert_eq!(acls.len(), 1);
    }

    #[test]
    fn super_users_are_always_allowed_even_against_a_deny() {
        let mut acls = AclSet::new();
        acls.add(rule(
            "*",
            ResourcePattern::cluster(),
            Operation::Alter,
            Effect::Deny,
        ))
        .unwrap();
        let auth = Authorizer::new(["root".to_string()]);
        assert_eq!(
            auth.authorize(&acls, Some("root"), Resource::Cluster, Operation::Alter),
            Decision::SuperUser
        );
        assert!(!auth
            .authorize(&acls, Some("alice"), Resource::Cluster, Operation::Alter)
            .is_allowed());
        assert!(!auth.is_super_user(None));
    }

    #[test]
    fn the_rule_count_is_capped_with_a_typed_error() {
        let mut acls = AclSet::new();
        for i in 0..RULES_MAX {
            acls.add(rule(
                &format!("p{i}"),
                topic("t"),
                Operation::Consume,
                Effect::Allow,
            ))
            .unwrap();
        }
        let one_more = rule("late", topic("t"), Operation::Consume, Effect::Allow);
        assert_eq!(
            acls.add(one_more),
            Err(AclError::TooManyRules { limit: RULES_MAX })
        );
        // Re-adding an existing rule is not a new rule.
        assert_eq!(
            acls.add(rule("p7", topic("t"), Operation::Consume, Effect::Allow)),
            Ok(false)
        );
        // Checks stay indexed with the set full.
        assert!(acls
            .check(Some("p99999"), Resource::Topic("t"), Operation::Consume)
            .is_allowed());
    }

    #[test]
    fn prefixes_of_every_length_come_and_go_without_a_stale_bound() {
        let mut acls = AclSet::new();
        let long = rule(
            "a",
            ResourcePattern::prefixed(ResourceKind::Topic, "abcdef"),
            Operation::Consume,
            Effect::Allow,
        );
        let short = rule(
            "a",
            ResourcePattern::prefixed(ResourceKind::Topic, "ab"),
            Operation::Produce,
            Effect::Allow,
        );
        acls.add(long.clone()).unwrap();
        acls.add(short.clone()).unwrap();
        let may = |acls: &AclSet, op| acls.check(Some("a"), Resource::Topic("abcdefg"), op);
        assert!(may(&acls, Operation::Consume).is_allowed());
        assert!(may(&acls, Operation::Produce).is_allowed());
        acls.remove(&long);
        assert!(!may(&acls, Operation::Consume).is_allowed());
        assert!(may(&acls, Operation::Produce).is_allowed());
        acls.add(long).unwrap();
        acls.remove(&short);
        assert!(may(&acls, Operation::Consume).is_allowed());
        assert!(!may(&acls, Operation::Produce).is_allowed());
    }

    #[test]
    fn a_full_set_of_prefix_rules_builds_and_checks_quickly() {
        // Rebuilding from a snapshot adds every rule once: that must stay
        // near-linear even when all of them are prefixes.
        let started = std::time::Instant::now();
        let acls = AclSet::from_rules((0..RULES_MAX).map(|i| {
            rule(
                "p",
                ResourcePattern::prefixed(ResourceKind::Topic, format!("t{i}.")),
                Operation::Consume,
                Effect::Allow,
            )
        }))
        .unwrap();
        assert!(acls
            .check(Some("p"), Resource::Topic("t99999.x"), Operation::Consume)
            .is_allowed());
        assert!(!acls
            .check(Some("p"), Resource::Topic("t100000.x"), Operation::Consume)
            .is_allowed());
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn invalid_rules_are_refused() {
        let mut acls = AclSet::new();
        for bad in [
            rule("", topic("t"), Operation::Consume, Effect::Allow),
            rule("a", topic(""), Operation::Consume, Effect::Allow),
            rule(
                "a",
                topic(&"x".repeat(250)),
                Operation::Consume,
                Effect::Allow,
            ),
            rule("a\n", topic("t"), Operation::Consume, Effect::Allow),
            rule(
                "a",
                ResourcePattern::exact(ResourceKind::Cluster, "c"),
                Operation::Alter,
                Effect::Allow,
            ),
        ] {
            assert!(
                matches!(acls.add(bad.clone()), Err(AclError::InvalidRule { .. })),
                "{bad}"
            );
        }
        assert!(acls.is_empty());
    }

    #[test]
    fn a_set_rebuilt_from_its_rules_decides_the_same() {
        let mut acls = AclSet::new();
        acls.add(rule("a", topic("t"), Operation::Consume, Effect::Allow))
            .unwrap();
        acls.add(rule(
            "*",
            ResourcePattern::prefixed(ResourceKind::Lock, "jobs/"),
            Operation::Lock,
            Effect::Allow,
        ))
        .unwrap();
        let copy = AclSet::from_rules(acls.rules().cloned()).unwrap();
        assert_eq!(copy.len(), 2);
        assert!(copy
            .check(None, Resource::Lock("jobs/1"), Operation::Lock)
            .is_allowed());
        assert!(copy
            .check(Some("a"), Resource::Topic("t"), Operation::Consume)
            .is_allowed());
    }
}
