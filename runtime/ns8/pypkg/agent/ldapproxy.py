#
# ns8ctl's implementation of NS8's agent API (SPDX-License-Identifier: GPL-3.0-or-later).
#
"""``Ldapproxy``: how an instance reaches the cluster's user domains through the node's
ldapproxy instance, read from Redis with NS8's keys:

- the node's ldapproxy instance: ``node/<NODE_ID>/default_instance/ldapproxy``, and the local
  port of each domain: HASH ``module/<ldapproxy>/data/domain_port``;
- internal domains (provided by an instance such as samba or openldap): HASH
  ``module/<id>/srv/tcp/ldap`` (fields domain, schema, base_dn, bind_dn, bind_password, ...);
- external domains: HASH ``cluster/user_domain/ldap/<domain>/conf``, used only when LIST
  ``cluster/user_domain/ldap/<domain>/providers`` names at least one server.

Internal domains win over external ones of the same name. Everything is read through the
node's local replica (``REDIS_REPLICA_ADDRESS``), so it works while the leader is away.
"""

import os
import sys

import agent

_CONF_FIELDS = ("schema", "location", "base_dn", "bind_dn", "bind_password")

_HIDDEN = {
    "ad": (
        ["Guest", "krbtgt", "ldapservice"],
        ["DnsUpdateProxy", "Domain Computers", "Domain Controllers", "Domain Guests", "Domain Users",
         "Group Policy Creator Owners", "Read-only Domain Controllers", "Protected Users"],
    ),
    "rfc2307": ([], ["locals"]),
}


def _read_domains(rdb):
    domains = {}
    for key in rdb.scan_iter("cluster/user_domain/ldap/*/conf"):
        name = key.split("/")[3]
        if rdb.llen(f"cluster/user_domain/ldap/{name}/providers") == 0:
            continue
        conf = rdb.hgetall(key)
        domains[name] = {field: conf.get(field, "") for field in _CONF_FIELDS}
        domains[name]["location"] = "external"
    internal = {}
    for key in rdb.scan_iter("module/*/srv/tcp/ldap"):
        conf = rdb.hgetall(key)
        name = conf.get("domain")
        if name and name not in internal:
            internal[name] = {field: conf.get(field, "") for field in _CONF_FIELDS}
            internal[name]["location"] = "internal"
    domains.update(internal)
    return domains


class Ldapproxy:
    """The user domains of the cluster as this node's ldapproxy serves them."""

    def __init__(self, node_id=None):
        self.node_id = int(node_id if node_id is not None else os.environ["NODE_ID"])
        self.domains = None

    def _load(self):
        if self.domains is not None:
            return self.domains
        rdb = agent.redis_connect(use_replica=True)
        try:
            instance = rdb.get(f"node/{self.node_id}/default_instance/ldapproxy")
            if instance is None:
                # An AssertionError, as NS8's: callers may catch it when no ldapproxy is installed.
                raise AssertionError(f"agent.ldapproxy: node {self.node_id} has no ldapproxy instance (node/{self.node_id}/default_instance/ldapproxy)")
            ports = rdb.hgetall(f"module/{instance}/data/domain_port")
            bound = agent.get_bound_domain_list(rdb)
            domains = _read_domains(rdb)
        finally:
            rdb.close()
        module_id = os.environ.get("MODULE_ID")
        for name, conf in domains.items():
            if module_id and name not in bound:
                print(agent.SD_WARNING + f"agent.ldapproxy: domain {name} should not be used by {module_id}. "
                      f'Invoke agent.bind_user_domains(["{name}"]) to fix this warning.', file=sys.stderr)
            if name in ports:
                conf["listen_port"] = ports[name]
        self.domains = domains
        return domains

    def get_domains_list(self):
        """Names of every user domain."""
        return list(self._load().keys())

    def get_domain(self, domain):
        """``{host, port, schema, location, base_dn, bind_dn, bind_password, hidden_users,
        hidden_groups}`` of ``domain`` at the node's ldapproxy (host 127.0.0.1), or None when the
        domain is unknown or ldapproxy has no port for it."""
        conf = self._load().get(domain)
        if not conf or "listen_port" not in conf:
            return None
        users, groups = _HIDDEN.get(conf["schema"], ([], []))
        result = {"host": "127.0.0.1", "port": conf["listen_port"]}
        result.update({field: conf[field] for field in _CONF_FIELDS})
        result["hidden_users"] = list(users)
        result["hidden_groups"] = list(groups)
        return result

    def get_ldap_users_search_filter_clause(self, domain):
        """An LDAP filter excluding the domain's hidden users, or "" when there are none."""
        conf = self.get_domain(domain)
        attribute = {"ad": "sAMAccountName", "rfc2307": "uid"}.get(conf["schema"]) if conf else None
        if not attribute or not conf["hidden_users"]:
            return ""
        return "(!(|" + "".join(f"({attribute}={user})" for user in conf["hidden_users"]) + "))"

    def get_ldap_groups_search_filter_clause(self, domain):
        """An LDAP filter excluding hidden groups (and, for AD, non-global groups), or ""."""
        conf = self.get_domain(domain)
        if not conf:
            return ""
        clause = ""
        if conf["schema"] == "ad":
            attribute = "sAMAccountName"
            clause = "(!(groupType:1.2.840.113556.1.4.803:=2))"
        elif conf["schema"] == "rfc2307":
            attribute = "cn"
        else:
            return ""
        clause += "".join(f"({attribute}={group})" for group in conf["hidden_groups"])
        return f"(!(|{clause}))" if clause else ""
