#
# ns8ctl's implementation of NS8's agent API (SPDX-License-Identifier: GPL-3.0-or-later).
#
"""The ``agent`` package NS8 module actions import, written for ns8ctl.

Same names, arguments and results as the public API of NS8 core's ``agent`` package, so module
actions run unchanged; docs/ns8-compatibility.md lists every function with "same as NS8" or
"differs because ...". Dependencies: the Python standard library and ``redis`` (Debian's
python3-redis).

Environment the functions read (the module agent and ``runagent`` provide it):
``REDIS_ADDRESS`` / ``REDIS_REPLICA_ADDRESS`` (``host:port``, ``[v6]:port``, ``redis://`` or
``rediss://``), ``REDIS_USER`` / ``REDIS_PASSWORD`` (the instance's own ACL user),
``AGENT_STATE_DIR``, ``AGENT_INSTALL_DIR``, ``AGENT_ID``, ``AGENT_COMFD``, ``MODULE_ID``,
``NODE_ID``.
"""

import json
import os
import re
import shlex
import subprocess
import sys
import traceback
import warnings

import redis

from . import _protocol
from .safeio import exclusive_file_lock, safe_open

# sd-daemon(3) priority prefixes: the journal files stderr lines by them.
SD_EMERG = "<0>"
SD_ALERT = "<1>"
SD_CRIT = "<2>"
SD_ERR = "<3>"
SD_WARNING = "<4>"
SD_NOTICE = "<5>"
SD_INFO = "<6>"
SD_DEBUG = "<7>"

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DEFAULT_REDIS = "127.0.0.1:6379"


# ---- Redis -----------------------------------------------------------------------------------

def _parse_redis_address(address):
    """(host, port, ssl) of a REDIS_ADDRESS value."""
    ssl = False
    for scheme, tls in (("rediss://", True), ("redis://", False)):
        if address.startswith(scheme):
            address, ssl = address[len(scheme):].split("/", 1)[0], tls
            break
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else "6379"
    else:
        host, sep, port = address.rpartition(":")
        if not sep:
            host, port = address, "6379"
    if not port.isdigit():
        raise ValueError(f"Redis address {address!r} is not host:port")
    return host or "127.0.0.1", int(port), ssl


def redis_connect(privileged=False, use_replica=False, **kwargs):
    """Return a ``redis.Redis`` client.

    - default: the leader (``REDIS_ADDRESS``) as NS8's read-only ``default`` user;
    - ``privileged=True``: as the instance's own ACL user (``REDIS_USER`` / ``REDIS_PASSWORD``,
      KeyError when they are missing), which may write ``module/<id>/*``;
    - ``use_replica=True``: the node's local replica (``REDIS_REPLICA_ADDRESS``), to read
      configuration when the leader may be unreachable (service start-up).

    Other keyword arguments go to ``redis.Redis`` and win over these defaults; responses are
    decoded as UTF-8 strings unless ``decode_responses=False``.
    """
    variable = "REDIS_REPLICA_ADDRESS" if use_replica else "REDIS_ADDRESS"
    host, port, ssl = _parse_redis_address(os.environ.get(variable) or _DEFAULT_REDIS)
    if privileged:
        username, password = os.environ["REDIS_USER"], os.environ["REDIS_PASSWORD"]
    else:
        username, password = "default", "nopass"
    kwargs.setdefault("host", host)
    kwargs.setdefault("port", port)
    kwargs.setdefault("db", 0)
    kwargs.setdefault("username", username)
    kwargs.setdefault("password", password)
    kwargs.setdefault("decode_responses", True)
    if ssl:
        kwargs.setdefault("ssl", True)
    return redis.Redis(**kwargs)


# ---- Environment files -----------------------------------------------------------------------

def read_envfile(file_path):
    """Return the ``KEY=VALUE`` lines of an environment file as a dict.

    Blank lines and lines starting with ``#`` are skipped; a line is split at its first ``=``; a
    line without ``=`` is skipped with a warning naming the file and line. OSError when the file
    cannot be read.
    """
    env = {}
    with open(file_path, "r", encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            record = line.rstrip("\n")
            if record == "" or record.startswith("#"):
                continue
            name, sep, value = record.partition("=")
            if not sep:
                warnings.warn(f"read_envfile: {file_path}:{lineno} has no '=': line skipped", stacklevel=2)
                continue
            env[name] = value
    return env


def _check_env_entry(name, value, where):
    if not _ENV_NAME.match(name):
        raise ValueError(f"{where}: variable name {name!r} is not valid: use letters, digits and '_', not starting with a digit")
    if any(c in value for c in "\n\r\0"):
        raise ValueError(f"{where}: the value of {name} contains a newline, carriage return or NUL; environment files are read raw by systemd, so it is refused")


def write_envfile(file_path, envmap):
    """Replace ``file_path`` atomically with sorted ``KEY=VALUE`` lines of ``envmap``.

    Values are converted with ``str()``. ValueError (and nothing written) when a name is not a
    shell variable name or a value holds a newline, carriage return or NUL.
    """
    entries = []
    for name, value in envmap.items():
        value = str(value)
        _check_env_entry(name, value, file_path)
        entries.append(f"{name}={value}\n")
    entries.sort()
    with safe_open(file_path, "w", encoding="utf-8") as handle:
        handle.write("".join(entries))


def _state_environment():
    return os.path.join(os.environ["AGENT_STATE_DIR"], "environment")


def _update_state_environment(change):
    path = _state_environment()
    with exclusive_file_lock(path):
        try:
            envmap = read_envfile(path)
        except FileNotFoundError:
            envmap = {}
        if change(envmap):
            write_envfile(path, envmap)


def set_env(var_name, var_value):
    """Set one variable in ``$AGENT_STATE_DIR/environment`` (under ``.environment.lock``)."""
    mset_env({var_name: var_value})


def mset_env(env_dict):
    """Set several variables in ``$AGENT_STATE_DIR/environment`` at once."""
    if not env_dict:
        return
    values = {name: str(value) for name, value in env_dict.items()}
    for name, value in values.items():
        _check_env_entry(name, value, _state_environment())

    def change(envmap):
        envmap.update(values)
        return True

    _update_state_environment(change)


def unset_env(var_name):
    """Remove one variable from ``$AGENT_STATE_DIR/environment``; absent is not an error."""
    munset_env([var_name])


def munset_env(var_list):
    """Remove the named variables from ``$AGENT_STATE_DIR/environment``."""
    if not var_list:
        return

    def change(envmap):
        removed = [name for name in var_list if envmap.pop(name, None) is not None]
        return bool(removed)

    _update_state_environment(change)


# ---- Commands to the module agent (AGENT_COMFD) ---------------------------------------------

def _send(*fields):
    # Without AGENT_COMFD (a script run by hand) the command goes to stderr, as NS8 does.
    fd = int(os.environ.get("AGENT_COMFD", "2"))
    os.write(fd, _protocol.format_command(fields).encode("utf-8"))


def set_status(value):
    """``set-status validation-failed``: the action ends after this step, as invalid input."""
    _send("set-status", value)


def set_progress(value):
    """This step is at ``value`` percent (0-100)."""
    _send("set-progress", int(value))


def set_weight(step_name, weight):
    """Step ``step_name`` counts ``weight`` times in the action's overall progress."""
    _send("set-weight", step_name, int(weight))


def dump_env():
    """Ask the module agent to copy ``state/environment`` to ``<agent_id>/environment`` now.

    NS8's current agent does this at the end of every task anyway (so does ns8ctl's), and made
    this a no-op; ns8ctl's agent still honours the command, so it is sent when a step runs it.
    """
    if os.environ.get("AGENT_COMFD") not in (None, "", "2"):
        _send("dump-env")


def get_progress_callback(range_low, range_high):
    """Return ``f(p)`` mapping progress ``p`` in 0-100 to ``range_low``-``range_high`` and sending it."""
    assert_exp(range_low < range_high)
    delta = range_high - range_low

    def callback(progress):
        if 0 <= progress <= 100:
            set_progress(range_low + int(delta * progress / 100))

    return callback


def run_helper(*args, log_command=True, **kwargs):
    """Run the command ``args`` and return a ``subprocess.CompletedProcess`` (no output captured).

    - The command line is written to stderr at INFO priority unless ``log_command=False``.
    - Its stdout goes to our stderr unless ``stdout=`` says otherwise (action stdout is the
      task's JSON output, which a helper must not pollute).
    - It gets its own ``AGENT_COMFD`` pipe; ``set-progress N`` lines it writes there reach
      ``progress_callback(N)`` (increasing values only), and the callback gets 100 at the end.
    - ``env`` (default ``os.environ``), ``pass_fds`` and any other ``subprocess.Popen`` keyword.
    """
    if log_command:
        print(SD_INFO + shlex.join(str(a) for a in args), file=sys.stderr, flush=True)
    progress_callback = kwargs.pop("progress_callback", None)
    start_env = kwargs.pop("env", None) or os.environ
    pass_fds = tuple(kwargs.pop("pass_fds", ()))
    stdout = kwargs.pop("stdout", sys.stderr)
    read_fd, write_fd = os.pipe()
    try:
        child_env = dict(start_env, AGENT_COMFD=str(write_fd))
        proc = subprocess.Popen(args, stdout=stdout, pass_fds=pass_fds + (write_fd,), env=child_env, **kwargs)
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise
    os.close(write_fd)
    last = -1
    with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace") as commands:
        for line in commands:
            fields = _protocol.split_command(line)
            if not fields or fields[0] != "set-progress" or len(fields) != 2 or not fields[1].isdigit():
                continue
            value = int(fields[1])
            if progress_callback and value > last:
                last = value
                progress_callback(value)
    proc.wait()
    if progress_callback and last < 100:
        progress_callback(100)
    return subprocess.CompletedProcess(args, proc.returncode)


# ---- Small helpers ---------------------------------------------------------------------------

def slurp_file(file_name):
    """The content of a text file, stripped of leading and trailing white space."""
    with open(file_name, "r", encoding="utf-8") as handle:
        return handle.read().strip()


def assert_exp(exp, message="Assertion failed"):
    """Exit the step with code 2, printing ``message`` and the caller's stack, unless ``exp`` is true."""
    if exp:
        return
    if message:
        print(message, file=sys.stderr)
    traceback.print_stack(sys._getframe(1), file=sys.stderr)
    sys.exit(2)


def get_image_name_from_url(image_url):
    """``ghcr.io/nethserver/samba:v1.0.0`` -> ``samba``; ``.../dokuwiki@sha256:...`` -> ``dokuwiki``."""
    last = image_url.rsplit("/", 1)[-1]
    return re.split(r"[:@]", last, maxsplit=1)[0]


def get_module_seq(module_id):
    """The sequence number of an instance id (``traefik3`` -> 3); -1 when there is none."""
    match = re.fullmatch(r"[^0-9]*([0-9]+)", module_id or "")
    return int(match.group(1)) if match else -1


def resolve_agent_id(agent_selector, node_id=None):
    """The agent id an NS8 selector names, or None (with a warning) when it names nothing.

    ``node`` -> ``node/<NODE_ID>``; ``self`` -> ``$AGENT_ID``; ``<module>@node`` /
    ``<module>@cluster`` -> the default instance on this node / in the cluster (read from the
    local replica); a number -> ``node/<N>``; ``cluster``, ``module/...``, ``node/...`` as they
    are; anything else is an instance id -> ``module/<id>``.
    """
    if node_id is None:
        node_id = os.environ.get("NODE_ID")
    agent_id = None
    if agent_selector == "node":
        agent_id = f"node/{node_id}" if node_id else None
    elif agent_selector == "self":
        agent_id = os.environ["AGENT_ID"]
    elif agent_selector.endswith("@node"):
        if node_id:
            name = agent_selector[: -len("@node")]
            instance = redis_connect(use_replica=True).get(f"node/{node_id}/default_instance/{name}")
            agent_id = f"module/{instance}" if instance else None
    elif agent_selector.endswith("@cluster"):
        name = agent_selector[: -len("@cluster")]
        instance = redis_connect(use_replica=True).get(f"cluster/default_instance/{name}")
        agent_id = f"module/{instance}" if instance else None
    elif agent_selector.isnumeric():
        agent_id = f"node/{agent_selector}"
    elif agent_selector == "cluster" or agent_selector.startswith(("module/", "node/")):
        agent_id = agent_selector
    else:
        agent_id = f"module/{agent_selector}"
    if agent_id is None:
        warnings.warn(f"Could not resolve {agent_selector} to an agent_id", stacklevel=2)
    return agent_id


# ---- Volumes ---------------------------------------------------------------------------------

def _module_is_rootfull():
    return os.geteuid() == 0


def get_existing_volume_args():
    """``--volume`` arguments for ``podman run``: the state dir at /srv/state and every existing
    Podman volume of the instance at /srv/volumes/<name> (rootfull volumes are the ones named
    ``<MODULE_ID>-<name>``)."""
    module_id = os.environ["MODULE_ID"]
    args = {"_statedir": f"--volume={os.environ['AGENT_STATE_DIR']}:/srv/state"}
    listing = subprocess.run(["podman", "volume", "ls", "--format=json"], stdout=subprocess.PIPE, check=True)
    for volume in json.loads(listing.stdout or b"[]"):
        name = volume["Name"]
        if _module_is_rootfull():
            if not name.startswith(module_id + "-"):
                continue
            target = name[len(module_id) + 1:]
        else:
            target = name
        args[name] = f"--volume={name}:/srv/volumes/{target}"
    return list(args.values())


def get_state_volume_args():
    """``--volume`` arguments for the state dir and the volumes ``etc/state-include.conf`` names
    (lines ``volumes/<name>/...``); only the state dir when the file is missing."""
    module_id = os.environ["MODULE_ID"]
    args = {"_statedir": f"--volume={os.environ['AGENT_STATE_DIR']}:/srv/state"}
    try:
        with open(os.path.join(os.environ["AGENT_INSTALL_DIR"], "etc", "state-include.conf"), encoding="utf-8") as handle:
            for line in handle:
                if not line.startswith("volumes/"):
                    continue
                name = line[len("volumes/"):].split("/", 1)[0].strip()
                if not name:
                    continue
                volume = f"{module_id}-{name}" if _module_is_rootfull() else name
                args[volume] = f"--volume={volume}:/srv/volumes/{name}"
    except FileNotFoundError:
        pass
    return list(args.values())


# ---- Cluster facts and node services ---------------------------------------------------------

def get_smarthost_settings(rdb):
    """The cluster's mail relay settings (``cluster/smarthost``), with NS8's defaults when unset."""
    conf = rdb.hgetall("cluster/smarthost")
    if not conf:
        return {"port": 587, "host": "", "username": "", "password": "", "enabled": False, "encrypt_smtp": "starttls", "tls_verify": True}
    return {
        "port": int(conf.get("port") or 587),
        "host": conf.get("host", ""),
        "username": conf.get("username", ""),
        "password": conf.get("password", ""),
        "enabled": conf.get("enabled") == "1",
        "encrypt_smtp": conf.get("encrypt_smtp", "starttls"),
        "tls_verify": conf.get("tls_verify") == "1",
    }


def get_bound_domain_list(rdb, module_id=None):
    """The user domains bound to ``module_id`` (default ``$MODULE_ID``) in ``cluster/module_domains``."""
    module_id = module_id or os.environ.get("MODULE_ID")
    if not module_id:
        return []
    value = rdb.hget("cluster/module_domains", module_id)
    return value.split() if value else []


def _not_managed(what):
    # ns8ctl runs no cluster or node agent that would serve these tasks: they would never end.
    print(SD_NOTICE + f"agent: {what}: not managed by ns8ctl (no cluster/node agent serves it); nothing was changed", file=sys.stderr)
    return True


def add_public_service(name, ports, replace_ports=False):
    """NS8 opens ``ports`` (``"25/tcp"``...) in the node firewall for service ``name``. ns8ctl
    manages no firewall: it logs that and returns True, so actions asserting it go on."""
    return _not_managed(f"add_public_service({name!r}, {list(ports)!r})")


def remove_public_service(name):
    """Counterpart of add_public_service: logged, returns True."""
    return _not_managed(f"remove_public_service({name!r})")


def bind_user_domains(domain_list, check=False):
    """NS8 records the user domains the instance uses (a cluster task). ns8ctl runs no cluster
    agent: logged, returns True (or returns None when ``check`` is true, as NS8 does on success)."""
    _not_managed(f"bind_user_domains({list(domain_list)!r})")
    return None if check else True


# ---- Host facts --------------------------------------------------------------------------------

def get_hostname():
    """The node's fully qualified host name (``hostname -f``); ``myserver.example.org`` when it
    cannot be found out."""
    try:
        name = subprocess.run(["hostname", "-f"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        name = ""
    return name or "myserver.example.org"


def tcp_port_in_use(port):
    """True when something listens on TCP ``port`` (IPv4 or IPv6 wildcard bind fails)."""
    import errno
    import socket

    for family in (socket.AF_INET, socket.AF_INET6):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("", port))
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    return True
                if error.errno != errno.EAFNOSUPPORT:
                    raise
    return False


def http_route_in_use(domain=None, path=""):
    """True unless the node's HTTP router answers 404 for ``http://127.0.0.1<path>`` (with
    ``Host: domain``); redirects count as "in use" and are not followed. OSError when nothing
    answers on port 80."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", 80, timeout=5)
    try:
        connection.request("HEAD", path or "/", headers={"Host": domain} if domain else {})
        return connection.getresponse().status != 404
    finally:
        connection.close()


def list_service_providers(rdb, service, transport="*", filters=None, sortby="node_proximity"):
    """The endpoints published under ``*/srv/<transport>/<service>`` (NS8's service discovery),
    each HASH completed for module keys with module_id, module_seq, module_uuid, node, transport,
    ui_name (and qualifier for ``module/<id>/<qualifier>/srv/...``); kept when every ``filters``
    field matches exactly. With a module_uuid filter only the highest sequence number stays.
    Sorted by ``node_proximity`` (this node, then the leader's, then others), ``module_seq_asc``
    or ``module_seq_desc``."""
    filters = filters or {}
    results = []
    for key in rdb.scan_iter(f"*/srv/{transport}/{service}"):
        record = rdb.hgetall(key)
        parts = key.split("/")
        if parts[0] == "module":
            module_id = parts[1]
            record.update({
                "module_id": module_id,
                "module_seq": get_module_seq(module_id),
                "module_uuid": rdb.hget("cluster/module_uuid", module_id),
                "node": rdb.hget("cluster/module_node", module_id),
                "transport": parts[-2],
                "ui_name": rdb.get(f"module/{module_id}/ui_name"),
            })
            if parts[2] != "srv":
                record["qualifier"] = parts[2]
        if all(record.get(k) == v for k, v in filters.items()):
            results.append(record)
    if "module_uuid" in filters and len(results) > 1:
        results = [max(results, key=lambda r: r.get("module_seq", -1))]
    if sortby == "module_seq_asc":
        results.sort(key=lambda r: r.get("module_seq", -1))
    elif sortby == "module_seq_desc":
        results.sort(key=lambda r: r.get("module_seq", -1), reverse=True)
    elif sortby == "node_proximity":
        here = os.environ.get("NODE_ID")
        leader = rdb.hget("cluster/environment", "NODE_ID")
        results.sort(key=lambda r: (0 if r.get("node") == here else 1 if r.get("node") == leader else 2, r.get("module_seq", -1)))
    return results


# ---- Certificates and routes of the node's traefik -------------------------------------------

def certificate_event_matches(event, name):
    """True when a ``certificate-changed`` event from this node names ``name`` or the wildcard
    covering it (``*.example.org`` for ``www.example.org``)."""
    if str(event.get("node_id")) != os.environ["NODE_ID"]:
        return False
    names = event.get("names", [])
    parent = name.split(".", 1)[1] if "." in name else None
    return name in names or (parent is not None and "*." + parent in names)


def _traefik_task(action, data, agent_id=None):
    return tasks.run(agent_id=agent_id or resolve_agent_id("traefik@node"), action=action, data=data, extra={"isNotificationHidden": True})


def _traefik_action(action, data, error_passthrough, agent_id):
    response = _traefik_task(action, data, agent_id)
    if error_passthrough and response["exit_code"] != 0:
        # Fail this step the way the router failed: its validation errors become ours.
        if 1 < response["exit_code"] < 30:
            set_status("validation-failed")
        print(response["error"], end="", file=sys.stderr)
        json.dump(response["output"], fp=sys.stdout)
        sys.exit(response["exit_code"])
    return response


def set_route(data, error_passthrough=True, agent_id=None):
    """Run ``set-route`` on the node's traefik; on failure (with ``error_passthrough``) end this
    step with traefik's exit code, error and output. Let's Encrypt checks default on."""
    if error_passthrough:
        data.setdefault("lets_encrypt_check", True)
        data.setdefault("lets_encrypt_cleanup", True)
    return _traefik_action("set-route", data, error_passthrough, agent_id)


def set_certificate(data, error_passthrough=True, agent_id=None):
    """Run ``set-certificate`` on the node's traefik (failure handled as in set_route)."""
    return _traefik_action("set-certificate", data, error_passthrough, agent_id)


def get_route(route_id, agent_id=None):
    """The route ``route_id`` of the node's traefik as a dict; {} when it has none."""
    response = _traefik_task("get-route", {"instance": route_id}, agent_id)
    return (response["output"] or {}) if response["exit_code"] == 0 else {}


def get_certificate(fqdn, agent_id=None):
    """The output of traefik's ``get-certificate`` for ``fqdn``; {} on failure."""
    response = _traefik_task("get-certificate", {"fqdn": fqdn}, agent_id)
    return (response["output"] or {}) if response["exit_code"] == 0 else {}


def get_certificate_and_key(name):
    """(certificate PEM, key PEM) for ``name`` from the node's traefik; Exception on failure."""
    import base64

    response = _traefik_task("get-certificate", {"fqdn": name})
    if response["exit_code"] != 0:
        raise Exception(response["error"])  # pylint: disable=broad-exception-raised
    first = response["output"]["certificates"][0]
    return base64.b64decode(first["cert"]).decode("utf-8"), base64.b64decode(first["key"]).decode("utf-8")


# Imported last: agent.tasks uses the functions above (``import agent`` alone must give
# ``agent.tasks.run``, as NS8's package does).
from . import tasks  # noqa: E402  pylint: disable=wrong-import-position
