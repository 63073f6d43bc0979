"""Syntax-level sanity of the example OpenSIPS 3.x configurations, without OpenSIPS.

OpenSIPS is not in Debian 12, so the configs under packaging/examples/opensips
cannot be started here. These tests check them against what the OpenSIPS 3.x
documentation says exists. Every module, parameter, function, variable and MI
command in the tables below was read in the OpenSIPS/opensips repository (3.x
versions: named MI parameters, cmd_export_t with CMD_PARAM_* types) or on
opensips.org; each entry names where. Where a module README's section was not
available in a 3.x version, the 3.x source's export table was read instead
(`cmds[]`, `mod_params[]`, `mi_cmds[]`), and the entry says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import ROOT

CONFIGS = sorted((ROOT / "packaging" / "examples" / "opensips").glob("*/opensips.cfg"))


@dataclass(frozen=True)
class ModuleDoc:
    source: str
    params: frozenset[str] = field(default_factory=frozenset)
    functions: frozenset[str] = field(default_factory=frozenset)
    variables: frozenset[str] = field(default_factory=frozenset)


def _m(source: str, params: str = "", functions: str = "", variables: str = "") -> ModuleDoc:
    return ModuleDoc(source, frozenset(params.split()), frozenset(functions.split()), frozenset(variables.split()))


MODULES: dict[str, ModuleDoc] = {
    "proto_udp": _m("examples/templates/trunking.m4 (3.x): loadmodule \"proto_udp.so\" for socket=udp:..."),
    "sl": _m("modules/sl/sl.c (3.x) cmds[] and mod_params[]",
             params="enable_stats",
             functions="sl_send_reply sl_reply_error"),
    "tm": _m("modules/tm/README.md 'Exported Parameters', 'Exported Functions'",
             params="fr_timeout fr_inv_timeout wt_timer delete_timer T1_timer T2_timer ruri_matching "
                    "via1_matching unix_tx_timeout restart_fr_on_each_reply tw_append "
                    "pass_provisional_replies syn_branch onreply_avp_mode disable_6xx_block enable_stats "
                    "minor_branch_flag timer_partitions auto_100trying",
             functions="t_relay t_reply t_reply_with_body t_newtran t_check_trans t_check_status "
                       "t_local_replied t_was_cancelled t_cancel_branch t_new_request t_on_failure "
                       "t_on_reply t_on_branch t_add_hdrs t_replicate t_write_req t_write_unix t_flush_flags"),
    "rr": _m("modules/rr/rr_mod.c (3.x) cmds[] and module parameters; used by examples/templates/trunking.m4",
             params="append_fromtag enable_double_rr add_username enable_socket_mismatch_warning",
             functions="loose_route record_route record_route_preset add_rr_param check_route_param "
                       "is_direction"),
    "maxfwd": _m("modules/maxfwd/maxfwd.c cmds[]/params[]; mf_process_maxfwd_header() in "
                 "examples/templates/trunking.m4 (3.x)",
                 params="max_limit",
                 functions="mf_process_maxfwd_header is_maxfwd_lt"),
    "sipmsgops": _m("modules/sipmsgops/sipmsgops.c (3.x) cmds[]; no module parameters",
                    functions="append_to_reply append_hf insert_hf append_urihf remove_hf remove_hf_re "
                              "remove_hf_glob is_present_hf append_time is_method has_body has_body_part "
                              "is_privacy remove_body_part add_body_part codec_exists codec_exists_re "
                              "codec_delete codec_delete_re codec_delete_except_re codec_move_up "
                              "codec_move_up_re codec_move_down codec_move_down_re is_audio_on_hold "
                              "sipmsg_validate change_reply_status stream_exists stream_delete "
                              "list_hdr_has_option list_hdr_add_option list_hdr_remove_option has_totag "
                              "ruri_has_param ruri_add_param ruri_del_param ruri_tel2sip is_uri_user_e164"),
    "json": _m("modules/json/README.md 'Exported Parameters', 'Exported Pseudo-Variables', 'Exported Functions'",
               params="enable_long_quoting",
               functions="json_link json_merge",
               variables="json json_pretty json_compact json_compact_noescape"),
    "cachedb_local": _m("modules/cachedb_local/README.md (3.x) 'Exported Parameters', 'Exported Functions'",
                        params="cachedb_url cache_collections cache_clean_period cluster_id "
                               "cluster_persistency enable_restart_persistency",
                        functions="cache_remove_chunk"),
    "mi_script": _m("modules/mi_script/README.md 'Exported Parameters', 'Exported Functions'",
                    params="pretty_printing trace_destination trace_bwlist",
                    functions="mi"),
    "db_text": _m("modules/db_text/README.md (3.x: db_text:dump MI) 'Exported Parameters'",
                  params="db_mode buffer_size"),
    "dialog": _m("required by load_balancer: modules/load_balancer/README.md 'Dependencies'"),
    "load_balancer": _m("modules/load_balancer/README.md 'Exported Parameters', 'Exported Functions' "
                        "(3.x: lb_start(grp,resources[,flags],[attrs])); load_balancer.c (3.x) mod_params[]",
                        params="db_url db_table probing_interval probing_verbose probing_method probing_from "
                               "probing_reply_codes lb_define_blacklist cluster_id cluster_sharing_tag "
                               "fetch_freeswitch_stats initial_freeswitch_load",
                        functions="lb_start lb_next lb_start_or_next load_balance lb_reset lb_is_started "
                                  "lb_disable_dst lb_is_destination lb_count_call"),
    "dispatcher": _m("modules/dispatcher/README.md 'Exported Parameters' (db_url, persistent_state, ...); "
                     "dispatcher.c (3.x) params[] (persistent_state INT_PARAM)",
                     params="db_url attrs_avp hash_pvar setid_pvar ds_ping_method ds_ping_from "
                            "ds_ping_interval ds_probing_sock ds_probing_threshhold ds_probing_mode "
                            "ds_define_blacklist options_reply_codes dst_avp grp_avp cnt_avp sock_avp "
                            "pvar_algo_pattern persistent_state table_name partition setid_col "
                            "destination_col state_col weight_col priority_col attrs_col socket_col",
                     functions="ds_select_dst ds_select_domain ds_next_dst ds_next_domain ds_mark_dst "
                               "ds_count ds_is_in_list"),
}

#: Core functions: core_cmds.c (3.x) core_cmds[], and xlog() from
#: Documentation/Script-CoreFunctions ("xlog([log_level, ]format_string)").
CORE_FUNCTIONS = frozenset(
    "forward send setflag resetflag isflagset setbflag resetbflag isbflagset sethost rewritehost "
    "sethostport rewritehostport setuser rewriteuser setuserpass rewriteuserpass setport rewriteport "
    "seturi rewriteuri prefix strip strip_tail append_branch remove_branch pv_printf revert_uri "
    "setdsturi resetdsturi isdsturiset force_rport add_local_rport force_tcp_alias "
    "set_advertised_address set_advertised_port force_send_socket serialize_branches next_branches "
    "use_blacklist unuse_blacklist cache_store cache_remove cache_fetch cache_counter_fetch cache_add "
    "cache_sub cache_raw_query raise_event subscribe_event construct_uri get_timestamp script_trace "
    "is_myself xlog".split())

#: Statements and keywords: Documentation/Script-Statements (if, switch/case/
#: break/default, while, for each), Script-Routes (route, return, exit).
KEYWORDS = frozenset("if else switch case default break while for in route return exit drop NULL".split())

#: Core variables: pvar.c (3.x) _pv_names_table[] (Documentation/Script-CoreVar-3-4).
CORE_VARIABLES = frozenset(
    "avp hdr hdrcnt var ai au ar adu ad an aU Au bf branch ci cl cs ct cT dd di dir dip dp dP ds du duri "
    "fd fn fs ft fu from fU log_level mb mf mi ml od op oP ou ouri oU path pd pn pp pr proto pu pU rb rc "
    "retcode rd re rm rp rP rr rs rt rT ru ruri ru_q rU Ri Rp src_ip si sp td time tn tt tu to tU Tf Ts "
    "Tsm TS ua C argv param cfg_line cfg_file xlog_level".split())

#: Core parameters: Documentation/Script-CoreParameters-3-4 (socket replaced
#: listen in 3.1; stderror_enabled/syslog_enabled in 3.4) and
#: examples/templates/trunking.m4 (3.x), which sets the same ones.
CORE_PARAMS = frozenset("log_level xlog_level stderror_enabled syslog_enabled syslog_facility udp_workers "
                        "socket mpath debug_mode".split())

#: Transformations: {s.int}, as examples/templates/trunking.m4 (3.x) uses it
#: ("$(var(size){s.int})"); Documentation/Script-Tran.
#: {param.value,name}: Documentation/Script-Tran "param.value"
#: (transformations.c "param" class).
#: {s.encode.hexa}: Documentation/Script-Tran "s.encode.hexa" (transformations.c
#: TR_S_ENCODEHEXA), the bytes as hex, so that a comparison sees case.
#: {s.sha256}, {s.substr,offset,length}: Documentation/Script-Tran-3-x
#: "s.sha256", "s.substr" (the room key of spec/load-affinity.md 4.1).
TRANSFORMATIONS = frozenset({"s.int", "param.value", "s.encode.hexa", "s.sha256", "s.substr"})

#: MI commands called with mi() and the parameter names of each recipe.
MI_COMMANDS: dict[str, tuple[str, list[frozenset[str]]]] = {
    "lb_list": ("load_balancer README 'lb_list'; load_balancer.c mi_cmds[]", [frozenset()]),
    "lb_resize": ("load_balancer README 'lb_resize'", [frozenset({"destination_id", "res_name", "new_capacity"})]),
    "lb_status": ("load_balancer README 'lb_status'",
                  [frozenset({"destination_id"}), frozenset({"destination_id", "new_status"})]),
    "ds_set_state": ("dispatcher 3.x 'ds_set_state'; dispatcher.c mi_cmds[]",
                     [frozenset({"state", "group", "address"})]),
    # The MI name is cache_fetch_chunk (cachedb_local README "cache_fetch_chunk"):
    # OpenSIPS 3.6.8 answers "Method not found" to cachedb_local:fetch_chunk.
    "cache_fetch_chunk": ("cachedb_local README 'Exported MI Functions' 'cache_fetch_chunk'",
                          [frozenset({"glob"}), frozenset({"glob", "collection"})]),
}


# -- a small reader for OpenSIPS scripts -----------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def strip_comments(text: str) -> str:
    """The script without '#' comments (outside strings)."""
    out = []
    for line in text.splitlines():
        kept, in_str, escaped = [], False, False
        for ch in line:
            if in_str:
                kept.append(ch)
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == '"':
                    in_str = False
            elif ch == '"':
                in_str = True
                kept.append(ch)
            elif ch == "#":
                break
            else:
                kept.append(ch)
        out.append("".join(kept))
    return "\n".join(out)


def code_of(path: Path) -> str:
    return strip_comments(path.read_text())


def without_strings(code: str) -> str:
    """The code with every string's content blanked (same length, same offsets)."""
    return _STRING.sub(lambda m: '"' + " " * (len(m.group()) - 2) + '"', code)


def loaded_modules(code: str) -> list[str]:
    return [m.removesuffix(".so") for m in re.findall(r'^\s*loadmodule\s+"([^"]+)"', code, re.M)]


def route_blocks(code: str) -> dict[str, str]:
    """Body of every route[NAME], timer_route[NAME, N] and local_route/route block."""
    blocks = {}
    for match in re.finditer(r'^(route|timer_route|local_route|failure_route)\s*(?:\[([^\],]+)[^\]]*\])?\s*\{',
                             code, re.M):
        depth, i = 0, match.end() - 1
        bare = without_strings(code)
        while True:
            if bare[i] == "{":
                depth += 1
            elif bare[i] == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        name = match.group(2) or match.group(1)
        blocks[name.strip()] = code[match.end():i]
    return blocks


@pytest.fixture(params=CONFIGS, ids=lambda p: p.parent.name)
def config(request) -> Path:
    return request.param


def test_both_example_configs_exist():
    assert {p.parent.name for p in CONFIGS} == {"compositor", "subscriber"}


def test_every_loadmodule_names_a_documented_module(config):
    unknown = [m for m in loaded_modules(code_of(config)) if m not in MODULES]
    assert unknown == []


def test_every_modparam_names_a_documented_parameter_of_a_loaded_module(config):
    code = code_of(config)
    loaded = set(loaded_modules(code))
    for module, param in re.findall(r'modparam\(\s*"([^"]+)"\s*,\s*"([^"]+)"', code):
        assert module in loaded, f"modparam for {module}, which is not loaded"
        assert param in MODULES[module].params, f"{module} documents no parameter {param!r}"


def test_every_global_parameter_is_a_documented_core_parameter(config):
    code = code_of(config)
    head = code.split("loadmodule", 1)[0]
    names = re.findall(r"^\s*([A-Za-z_]+)\s*=", head, re.M)
    assert names and set(names) <= CORE_PARAMS


def test_every_function_is_documented_by_the_core_or_a_loaded_module(config):
    code = code_of(config)
    loaded = set(loaded_modules(code))
    available = set(CORE_FUNCTIONS) | set(KEYWORDS)
    for module in loaded:
        available |= MODULES[module].functions
    body = without_strings("\n".join(line for line in code.splitlines()
                                      if not re.match(r"\s*(loadmodule|modparam)\b", line)))
    body = re.sub(r"\$\(?[A-Za-z_][A-Za-z0-9_.]*", "", body)  # variables, then their (name)
    body = re.sub(r"\{s\.[a-z]+\}", "", body)  # transformations
    called = set(re.findall(r"\b([A-Za-z_][A-Za-z0-9_]*)\s*\(", body))
    assert called - available == set()


def test_every_variable_is_a_core_variable_or_one_a_loaded_module_exports(config):
    code = code_of(config)
    known = set(CORE_VARIABLES)
    for module in loaded_modules(code):
        known |= MODULES[module].variables
    used = set(re.findall(r"\$\(?([A-Za-z_][A-Za-z0-9_.]*)", code))
    assert used - known == set()


def test_every_transformation_is_documented(config):
    used = set(re.findall(r"\{([a-z]+(?:\.[a-z0-9_]+)+)[^}]*\}", without_strings(code_of(config))))
    assert used <= TRANSFORMATIONS


def test_no_route_returns_0_which_would_end_the_script(config):
    # Script-CoreFunctions "return": return(0) ends the script, like exit
    assert "return(0)" not in code_of(config)


def test_braces_and_quotes_balance(config):
    for number, line in enumerate(code_of(config).splitlines(), 1):
        assert len(re.findall(r'(?<!\\)"', line)) % 2 == 0, f"line {number}: unbalanced quotes"
    bare = without_strings(code_of(config))
    for open_, close in ("{}", "()", "[]"):
        depth = 0
        for ch in bare:
            depth += (ch == open_) - (ch == close)
            assert depth >= 0, f"a {close} closes nothing"
        assert depth == 0, f"unbalanced {open_}{close}"


def test_every_route_called_is_defined(config):
    code = code_of(config)
    defined = set(re.findall(r"^route\[([^\]]+)\]", code, re.M))
    called = set(re.findall(r"\broute\(\s*([A-Za-z_][A-Za-z0-9_]*)", code))
    assert called and called - defined == set()


def test_every_mi_command_is_documented_with_its_parameter_names(config):
    blocks = route_blocks(code_of(config))
    seen = set()
    for name, body in blocks.items():
        for command in re.findall(r'\bmi\(\s*"([^"]+)"', body):
            seen.add(command)
            assert command in MI_COMMANDS, f"route {name}: MI {command} is not documented"
            names = frozenset(re.findall(r'\$avp\(mi_p\)\s*=\s*"([^"]+)"', body))
            assert names in MI_COMMANDS[command][1], f"route {name}: {command} with parameters {sorted(names)}"
    assert {"lb_resize", "lb_status", "ds_set_state"} <= seen


def test_the_mi_parameter_avps_are_emptied_before_each_call(config):
    for name, body in route_blocks(code_of(config)).items():
        if "$avp(mi_p) =" in body:
            assert body.index("$avp(mi_p) := NULL") < body.index("$avp(mi_p) ="), name
            assert "$avp(mi_v) := NULL" in body, name


def test_the_compositor_answers_what_the_spec_requires():
    code = code_of(ROOT / "packaging/examples/opensips/compositor/opensips.cfg")
    publish = route_blocks(code)["PUBLISH"]
    for answer in ("412", "423", "415", "489", "404", "403"):
        assert f"({answer}," in publish, answer
    assert 'append_to_reply("Min-Expires: 60\\r\\n")' in publish
    assert "SIP-ETag: $var(new_etag)" in publish and "Expires: $var(expires)" in publish
    # the transaction exists before an entity tag is consumed (spec 5.4)
    assert publish.index("t_newtran()") < publish.index('cache_fetch("local", "etag_')
    notify = route_blocks(code)["NOTIFY"]
    assert "(481," in notify


def test_every_body_rejection_names_member_and_rule(config):
    reasons = re.findall(r'"(Invalid load-status body: [^"]*)"', code_of(config))
    assert reasons
    for reason in reasons:
        assert re.fullmatch(r"Invalid load-status body: [a-z.]+ \([a-zA-Z-]+\)", reason), reason


def test_the_subscriber_sends_subscribe_from_a_timer_with_headers_from_local_route():
    blocks = route_blocks(code_of(ROOT / "packaging/examples/opensips/subscriber/opensips.cfg"))
    assert "load_status_subscriptions" in blocks
    assert 't_new_request("SUBSCRIBE"' in blocks["KEEP_SUBSCRIBED"]
    local = blocks["local_route"]
    for header in ("Event: load-status", "Expires: 600", "Accept: application/load-status+json", "Contact:"):
        assert f'append_hf("{header}' in local


def test_every_mi_value_is_passed_as_a_string(config):
    # mi_script takes a value's type from the NAME AVP's flags: an integer in
    # the value AVP is read as a string pointer and crashed every UDP worker
    # of OpenSIPS 3.6.8 (FIELD-NOTES). Values go in with pv_printf(..., "...").
    code = code_of(config)
    assert re.findall(r"\$avp\(mi_v\)\s*=", code) == []
    assert re.findall(r'pv_printf\(\$avp\(mi_v\), "[^"]*"\)', code)


def test_a_body_is_detected_by_content_length_not_has_body(config):
    # has_body() is true for every UDP request, Content-Length 0 included
    # (OpenSIPS 3.6.8): a removal PUBLISH would get 415.
    routing = code_of(config).split("\nroute {", 1)[1]
    assert "has_body()" not in routing
    assert "$cl > 0" in routing and "$cl == 0" in routing


def test_a_refused_or_unanswered_call_fails_over_to_another_node(config):
    blocks = route_blocks(code_of(config))
    assert 't_on_failure("NEXT_NODE")' in blocks["route"]
    failover = blocks["NEXT_NODE"]
    assert 't_check_status("408|480|486|5[0-9][0-9]")' in failover
    assert "lb_next(" in failover
    # lb_reset (a new session) only for a conference call, which tries two nodes at most.
    assert "lb_reset" not in failover or failover.index("lb_reset") > failover.index("if ($avp(ls_room) != NULL)")


def test_the_subscriber_refreshes_from_the_first_notify_of_a_subscription_only():
    notify = route_blocks(code_of(ROOT / "packaging/examples/opensips/subscriber/opensips.cfg"))["NOTIFY"]
    confirm = notify.index('cache_store("local", "subok_$var(sub_node)", "$ci")')
    guard = notify.rindex('if (!cache_fetch("local", "subok_$var(sub_node)", $var(ok_ci)) || $var(ok_ci) != $ci)', 0, confirm)
    assert notify.index('cache_store("local", "subdue_$var(sub_node)"', guard) < confirm
    assert "{param.value,expires}" in notify[guard:confirm]


def test_the_real_tier_changes_only_the_customize_me_lines(config):
    # tests/support/opensips.customize() is how the real tier adapts a config;
    # it must change nothing a reader is not told to change.
    import difflib

    from tests.support.opensips import PoolEntry, customize

    original = config.read_text()
    changed = customize(original, port=45678, dbtext=Path("/tmp/x/dbtext"),
                        pool=[PoolEntry("n1", 1, 40001), PoolEntry("n2", 2, 40002), PoolEntry("n3", 3, 40003)],
                        agents=[("n1", "sip:load-status@127.0.0.1:41001")], expires=60)
    blocks = route_blocks(original)
    switches = "".join(blocks[name].split("switch ($param(1)) {", 1)[1] for name in ("NODE_MAP", "AGENT")
                       if name in blocks)
    removed = [line[1:] for line in difflib.unified_diff(original.splitlines(), changed.splitlines(), lineterm="", n=0)
               if line.startswith("-") and not line.startswith("---")]
    assert removed
    for line in removed:
        assert "CUSTOMIZE ME" in line or line in switches, line


def test_no_expression_mixes_additive_and_multiplicative_operators(config):
    # OpenSIPS 3.6.8 evaluates script expressions left to right, without
    # precedence: "load + weight * limit / 100" gave ((load + weight) * limit)
    # / 100, a capacity that shrank as calls came in. One operator kind per
    # statement.
    for number, line in enumerate(code_of(config).splitlines(), 1):
        bare = without_strings(line)
        if re.search(r"[^=!<>]=[^=]", bare):
            right = re.split(r"[^=!<>]=[^=]", bare, maxsplit=1)[1]
            assert not (re.search(r"\s[+-]\s", right) and re.search(r"\s[*/]\s", right)), f"line {number}: {line.strip()}"


def test_the_readme_names_only_files_that_are_in_the_repository():
    # It pointed at a field-notes file outside the repository.
    readme = ROOT / "packaging/examples/opensips/README.md"
    text = readme.read_text()
    assert "FIELD-NOTES" not in text
    for path in re.findall(r"`([\w./-]+\.(?:py|cfg|toml|md|sh))`", text):
        assert (ROOT / path).exists() or (readme.parent / path).exists(), path
