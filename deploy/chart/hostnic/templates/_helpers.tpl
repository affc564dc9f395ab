{{/*
Names, labels and the checks every template shares.

Object names are fixed (hostnic, hostnic-agent, hostnic-lease), not derived
from the release name: a node has one CNI, so a second release in the same
cluster must fail on the first one's objects rather than install a second
set beside it, and the names stay the ones deploy/README.md and the
operator guide use.
*/}}

{{/*
The labels of every object. A component (agent, and later e.g. a
load-balancer controller) passes its name: (dict "root" $ "component" "agent").
*/}}
{{- define "hostnic.labels" -}}
{{- $root := .root | default . -}}
app.kubernetes.io/name: hostnic
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- if not $root.Values.plainManifests }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version }}
{{- end }}
{{- end }}

{{/*
A component's selector: never changes between releases (a DaemonSet's
selector is immutable) and is the same in deploy/*.yaml, so a kubectl
install can be taken over by Helm.
*/}}
{{- define "hostnic.selectorLabels" -}}
app.kubernetes.io/name: hostnic
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "hostnic.image" -}}
{{- $img := .Values.image -}}
{{- if $img.digest -}}
{{ $img.repository }}@{{ $img.digest }}
{{- else -}}
{{ $img.repository }}:{{ $img.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/* The host directory of the agent's socket (a hostPath). */}}
{{- define "hostnic.socketDir" -}}
{{ dir .Values.config.socket }}
{{- end }}

{{/*
What values.schema.json cannot say: rules between keys. Each failure names
the key and what to do, as the agent's own config errors do, but at helm
install/upgrade time instead of in a crash-looping pod.
*/}}
{{- define "hostnic.check" -}}
{{- $c := .Values.config -}}
{{- if and (eq $c.inventory.source "cloud") (not $c.vxnets) -}}
{{- fail "config.vxnets: name at least one vxnet (config.inventory.source is cloud)" -}}
{{- end -}}
{{- if gt (int64 $c.cloud.warm_min) (int64 $c.cloud.warm_max) -}}
{{- fail (printf "config.cloud.warm_min %v is above config.cloud.warm_max %v" $c.cloud.warm_min $c.cloud.warm_max) -}}
{{- end -}}
{{- if gt (int64 $c.cloud.bank_min) (int64 $c.cloud.bank_max) -}}
{{- fail (printf "config.cloud.bank_min %v is above config.cloud.bank_max %v" $c.cloud.bank_min $c.cloud.bank_max) -}}
{{- end -}}
{{- if and (gt (int64 $c.cloud.bank_max) 0) (ne $c.cloud.leak_sweep "cluster") -}}
{{- fail (printf "config.cloud.bank_max %v needs config.cloud.leak_sweep: cluster" $c.cloud.bank_max) -}}
{{- end -}}
{{- range $s := $c.shared -}}
{{- if not (has $s.vxnet $c.vxnets) -}}
{{- fail (printf "config.shared: vxnet %s is not one of config.vxnets" $s.vxnet) -}}
{{- end -}}
{{- end -}}
{{- range $v := .Values.cni.vxnets -}}
{{- if not (has $v $c.vxnets) -}}
{{- fail (printf "cni.vxnets: %s is not one of config.vxnets" $v) -}}
{{- end -}}
{{- end -}}
{{- range $name := list "vxnet" "ip" "routes" -}}
{{- $h := get $c.hooks $name -}}
{{- if and $h.module $h.path -}}
{{- fail (printf "config.hooks.%s: set module or path, not both" $name) -}}
{{- end -}}
{{- if and (or $h.module $h.path) (not $h.sha256) -}}
{{- fail (printf "config.hooks.%s.sha256 is required with a module: modules are pinned by digest (sha256sum the .wasm)" $name) -}}
{{- end -}}
{{- if and $h.sha256 (not (or $h.module $h.path)) -}}
{{- fail (printf "config.hooks.%s.sha256 is set but neither module nor path is" $name) -}}
{{- end -}}
{{- if $h.module -}}
{{- $got := $h.module | b64dec | sha256sum -}}
{{- if ne $got (lower $h.sha256) -}}
{{- fail (printf "config.hooks.%s.module has sha256 %s, not the pinned %s: a different file, or not base64 of the .wasm (base64 -w0)" $name $got $h.sha256) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.credentials.create (not .Values.credentials.configYaml) -}}
{{- fail "credentials.configYaml: give config.yaml's text (--set-file credentials.configYaml=./config.yaml) with credentials.create" -}}
{{- end -}}
{{- end }}

{{/*
The hash of what the agent reads only at start (see "hostnic.agentToml"),
for the pod template's annotation: equal hashes, no roll.
*/}}
{{- define "hostnic.startChecksum" -}}
{{- $parts := list (include "hostnic.agentToml" (dict "root" . "live" false)) (include "hostnic.conflist" .) .Values.credentials.secretName -}}
{{- if .Values.credentials.create -}}
{{- $parts = append $parts .Values.credentials.configYaml -}}
{{- end -}}
{{- join "\n---\n" $parts | sha256sum | quote -}}
{{- end }}
