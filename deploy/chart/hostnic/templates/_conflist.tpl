{{/*
10-hostnic.conflist, from .Values.cni: hostnic first (install-cni refuses
anything else), then the chained plugins.
*/}}
{{- define "hostnic.conflist" -}}
{
  "cniVersion": {{ .Values.cni.cniVersion | toJson }},
  "name": {{ .Values.cni.name | toJson }},
  "plugins": [
    {
      "type": "hostnic",
      "socket": {{ .Values.config.socket | toJson }},
      {{- range $key := list "mtu" "timeoutSeconds" "connectTimeoutSeconds" }}
      {{- $v := index $.Values.cni $key }}
      {{- if not (kindIs "invalid" $v) }}
      {{ toJson $key }}: {{ $v }},
      {{- end }}
      {{- end }}
      {{- with .Values.cni.vxnets }}
      "vxnets": {{ toJson . }},
      {{- end }}
      "ipam": {
        "routes": [
          {{- range $i, $r := .Values.cni.routes }}
          {{- if $i }},{{ end }}
          { "dst": {{ $r.dst | toJson }}{{ with $r.gw }}, "gw": {{ toJson . }}{{ end }} }
          {{- end }}
        ]
      },
      "capabilities": {
        "io.kubernetes.cri.pod-annotations": true,
        "bandwidth": true
      }
    }
    {{- range .Values.cni.chained }},
    {{ toJson . }}
    {{- end }}
  ]
}
{{- end }}
