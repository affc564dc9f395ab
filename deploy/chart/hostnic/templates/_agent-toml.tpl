{{/*
agent.toml, from .Values.config, key for key.

Called with (dict "root" $ "live" true) for the ConfigMap, and with
"live" false for the checksum that rolls the agents: that rendering leaves
out exactly the keys the running agent applies by itself when its mounted
file changes (policy, [hooks] network_config and the [hooks.*] tables;
host/agent/src/policy/reload.rs), so a change to those alone updates the
ConfigMap without restarting any agent, and a change to any other key —
which the agent reads only at start — rolls them. A key added here is
restart-class unless it is put under `if $live`.
*/}}
{{- define "hostnic.tomlList" -}}
[{{ range $i, $v := . }}{{ if $i }}, {{ end }}{{ toJson $v }}{{ end }}]
{{- end }}

{{/* The [hooks.<name>] table, when the values configure that hook at all. */}}
{{- define "hostnic.hookTable" -}}
{{- $h := .hook -}}
{{- if or $h.module $h.path $h.config (ne $h.failure "fallback") (ne (int64 $h.deadline_ms) 200) (ne (int64 $h.memory_mb) 16) }}

[hooks.{{ .name }}]
{{- if $h.module }}
# The ConfigMap's binaryData key {{ .name }}.wasm.
path = {{ printf "/etc/hostnic/%s.wasm" .name | toJson }}
{{- else if $h.path }}
path = {{ $h.path | toJson }}
{{- end }}
{{- if $h.sha256 }}
sha256 = {{ lower $h.sha256 | toJson }}
{{- end }}
{{- if $h.config }}
config = {{ $h.config | toJson }}
{{- end }}
failure = {{ $h.failure | toJson }}
deadline_ms = {{ int64 $h.deadline_ms }}
memory_mb = {{ int64 $h.memory_mb }}
{{- end }}
{{- end }}

{{- define "hostnic.agentToml" -}}
{{- $root := .root -}}
{{- $live := .live -}}
{{- $c := $root.Values.config -}}
# hostnic-agent configuration, rendered by the hostnic chart from its
# values (config.*; docs/operator-guide.md has every key). Unknown keys
# are an error: a typo is refused at start, not silently ignored.

# The hostPath mounts of the DaemonSet and the conflist's "socket" name
# these too.
socket = {{ $c.socket | toJson }}
state_dir = {{ $c.state_dir | toJson }}

# The node's primary interface: hostnic never moves, addresses or routes
# it, and keeps the node's default route on it.
iface = {{ $c.iface | toJson }}
# MTU for pod NICs when the conflist does not set one.
mtu = {{ int64 $c.mtu }}
# How a pod's own NIC reaches it: "passthru" (the NIC stays on the node,
# the pod gets a passthru macvlan of it: no device move per ADD) or "move"
# (the NIC itself is moved into the pod). Per vxnet in [vxnet_wiring].
# docs/operator-guide.md, "Choosing a wiring".
wiring = {{ $c.wiring | toJson }}

# The QingCloud zone (else the credentials file's) and the vxnets pod NICs
# are created in.
{{- if $c.zone }}
zone = {{ $c.zone | toJson }}
{{- end }}
vxnets = {{ include "hostnic.tomlList" $c.vxnets }}
{{- if $live }}

# How the built-in vxnet guest orders `vxnets`:
#   FailRotate  - stay on one vxnet until creating a NIC on it fails
#   RoundRotate - advance to the next vxnet on every pod
#   Random
# Applied live when the ConfigMap changes.
policy = {{ $c.policy | toJson }}
{{- end }}

# The QingCloud API credentials: the Secret the DaemonSet mounts here. The
# agent reads its config.yaml, else its client.yaml.
iaas_credentials = "/etc/qingcloud"

{{- with $c.vxnet_wiring }}

[vxnet_wiring]
{{- range $vxnet, $w := . }}
{{ $vxnet | toJson }} = {{ $w | toJson }}
{{- end }}
{{- end }}

[log]
# error, warn, info, debug, trace, or a filter such as
# "info,hostnic_agent=debug". Logs go to stderr, so `kubectl logs` shows them.
level = {{ $c.log.level | toJson }}
format = {{ $c.log.format | toJson }}

[inventory]
# NICs come from the cloud ("static": the [[inventory.nics]] below, the
# same on every node).
source = {{ $c.inventory.source | toJson }}
{{- range $c.inventory.nics }}

[[inventory.nics]]
mac = {{ .mac | toJson }}
address = {{ .address | toJson }}
gateway = {{ .gateway | toJson }}
{{- with .vxnet }}
vxnet = {{ . | toJson }}
{{- end }}
{{- end }}

[kubernetes]
# The API server's view, as the ServiceAccount hostnic: the node's VM from
# its Node's spec.providerID (kubelet --provider-id=qingcloud://<instance
# id>), its pods' labels and owners from a watch, and the Lease electing
# the node that does cluster-wide duties (the chart's Role names it). The
# DaemonSet passes --node-name.
enabled = true
pod_wait_ms = {{ int64 $c.kubernetes.pod_wait_ms }}
lease_namespace = {{ $root.Release.Namespace | toJson }}
lease_name = {{ $c.kubernetes.lease_name | toJson }}
lease_seconds = {{ int64 $c.kubernetes.lease_seconds }}
# Each pod's decision as annotations (k8s.v1.cni.cncf.io/network-status,
# hostnic.io/decision), and events for failed ADDs and agent-level facts.
annotate = {{ $c.kubernetes.annotate }}
events = {{ $c.kubernetes.events }}
# Native multi-network (the k8s.v1.cni.cncf.io/networks annotation);
# leave off when Multus is installed.
networks = {{ $c.kubernetes.networks }}
# NetworkPolicy, enforced in each pod's own namespace (an nftables table
# written before the pod's interface is wired).
network_policy = {{ $c.kubernetes.network_policy }}

[load_balancer]
# Services of type LoadBalancer: a cloud load balancer each, run by the
# node holding the Lease, its backends the ready pods' own addresses.
enabled = {{ $c.load_balancer.enabled }}
vxnet = {{ $c.load_balancer.vxnet | toJson }}
backends = {{ $c.load_balancer.backends | toJson }}
health_check = {{ $c.load_balancer.health_check | toJson }}
class = {{ $c.load_balancer.class | toJson }}

[cni]
# The agent installs the network config (the ConfigMap's conflist) into
# the node's CNI config directory, as its container mounts it, once it
# serves and its pool has its first NIC: the node turns Ready only then.
conf_dir = "/host/etc/cni/net.d"
conflist = "/etc/hostnic/10-hostnic.conflist"

[metrics]
# GET /metrics (OpenMetrics) in the node's network namespace (the agent
# runs with hostNetwork): loopback keeps it on the node; "0.0.0.0:9273"
# lets a cluster Prometheus scrape each node's IP — restrict that port to
# the monitoring network. "" turns it off.
address = {{ $c.metrics.address | toJson }}

[cloud]
# This node's VM comes from its Node (see [kubernetes]). The cluster's name
# tags and names every NIC the agent creates, so leaks can be found.
cluster = {{ $c.cloud.cluster | toJson }}
# Free NICs kept ready per vxnet, and the most kept idle.
warm_min = {{ int64 $c.cloud.warm_min }}
warm_max = {{ int64 $c.cloud.warm_max }}
# NICs per VM, its primary and the gateway NICs included.
max_nics = {{ int64 $c.cloud.max_nics }}
idle_seconds = {{ int64 $c.cloud.idle_seconds }}
leak_grace_seconds = {{ int64 $c.cloud.leak_grace_seconds }}
sticky_release_seconds = {{ int64 $c.cloud.sticky_release_seconds }}
# The node check (kernel and pool; no cloud call unless something must
# change), the slow cloud poll (one DescribeNics, jittered ±20%) and the
# count of each vxnet's free addresses.
reconcile_seconds = {{ int64 $c.cloud.reconcile_seconds }}
cloud_poll_seconds = {{ int64 $c.cloud.cloud_poll_seconds }}
vxnet_count_seconds = {{ int64 $c.cloud.vxnet_count_seconds }}
# Leaked NICs: every node deletes its own; with "cluster" the Lease holder
# also those of nodes that are gone.
leak_sweep = {{ $c.cloud.leak_sweep | toJson }}
# A cold ADD answers "try again later" after this long (the attach goes
# on); keep it under the runtime's CNI timeout.
cold_add_wait_seconds = {{ int64 $c.cloud.cold_add_wait_seconds }}
# Requests per second the cloud allows the account, every node's together;
# each node paces its calls to its share (this over the number of Nodes).
account_api_rate = {{ $c.cloud.account_api_rate }}
# The NIC bank: the Lease holder keeps created, unattached NICs per vxnet
# (twice the last minute's claims, within bank_min..=bank_max; above
# bank_min released after idle_seconds without a claim), so a new node's
# pods need only attach calls. bank_max = 0: no bank.
bank_min = {{ int64 $c.cloud.bank_min }}
bank_max = {{ int64 $c.cloud.bank_max }}
{{- range $c.shared }}

# Shared-NIC mode: this vxnet's pods share the node's NIC there.
[[shared]]
vxnet = {{ .vxnet | toJson }}
range = {{ .range | toJson }}
block_prefix = {{ int64 (.block_prefix | default 28) }}
block_idle_seconds = {{ int64 (.block_idle_seconds | default 300) }}
{{- end }}

# The policy hooks (WebAssembly guests). Without a [hooks.*] table each
# hook runs its built-in default: the vxnet hook orders `vxnets` by
# `policy` above, the ip hook honours the hostnic.io/ip and
# hostnic.io/sticky annotations, the routes hook applies ipam.routes as
# the original plugin did. A module of your own is a binaryData key of
# this ConfigMap (mounted at /etc/hostnic), pinned by digest here, and
# swapped in live when the ConfigMap changes: deploy/README.md, "Policy
# modules". Writing one: guests/GUIDE.md.
[hooks]
enabled = {{ $c.hooks.enabled }}
watch_seconds = {{ int64 $c.hooks.watch_seconds }}
{{- if $live }}
# The hooks a network config (a NAD) may configure itself.
network_config = {{ include "hostnic.tomlList" $c.hooks.network_config }}
{{- $tables := "" }}
{{- range $name := list "vxnet" "ip" "routes" }}
{{- $tables = print $tables (include "hostnic.hookTable" (dict "name" $name "hook" (get $c.hooks $name))) }}
{{- end }}
{{- if $tables }}
{{- $tables }}
{{- else }}
# A module of your own, pinned (the same keys serve [hooks.ip] and
# [hooks.routes]):
# [hooks.vxnet]
# path = "/etc/hostnic/my_vxnet_policy.wasm"
# sha256 = "<64 hex digits: sha256sum of the file>"
# config = ""            # the guest's own config string; "" if absent
# failure = "fallback"   # or "fail": what a trap or bad answer does
# deadline_ms = 200
# memory_mb = 16
{{- end }}
{{- end }}
{{- end }}
