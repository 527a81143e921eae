{{/* Chart name. */}}
{{- define "locus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: RELEASE-locus (63 characters at most; -peers/-metrics/-warm are appended). */}}
{{- define "locus.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 48 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "locus.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "locus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "locus.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "locus.labels" -}}
helm.sh/chart: {{ include "locus.chart" . }}
{{ include "locus.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "locus.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "locus.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "locus.image" -}}
{{- printf "%s:%s" .Values.image.repository (toString (.Values.image.tag | default .Chart.AppVersion)) }}
{{- end }}

{{/* Paths inside the containers. */}}
{{- define "locus.socketDir" -}}/run/locus{{- end }}
{{- define "locus.socketPath" -}}/run/locus/locus.sock{{- end }}
{{- define "locus.cacheDir" -}}/var/cache/locus{{- end }}
{{- define "locus.mountDir" -}}/mnt/locus{{- end }}
{{- define "locus.peerTokenFile" -}}/etc/locus/peer/token{{- end }}
{{- define "locus.etcdTlsDir" -}}/etc/locus/etcd-tls{{- end }}
{{- define "locus.etcdPasswordFile" -}}/etc/locus/etcd-auth/password{{- end }}

{{/* The Secret holding the peer token: the one given, else the chart's own (empty: none). */}}
{{- define "locus.peerTokenSecret" -}}
{{- $p := .Values.peerAuth -}}
{{- if $p.token.existingSecret -}}{{ $p.token.existingSecret }}
{{- else if not (or (include "locus.peerTlsSecret" .) $p.insecure) -}}{{ include "locus.fullname" . }}-peer-token
{{- end -}}
{{- end }}

{{/* The key of the peer token in that Secret. */}}
{{- define "locus.peerTokenKey" -}}
{{- if .Values.peerAuth.token.existingSecret -}}{{ .Values.peerAuth.token.key }}{{- else -}}token{{- end -}}
{{- end }}
{{- define "locus.peerTlsDir" -}}/etc/locus/peer-tls{{- end }}

{{/* The Secret holding the peer certificate: the one given, else cert-manager's for the chart's Certificate (empty: none). */}}
{{- define "locus.peerTlsSecret" -}}
{{- $t := .Values.peerAuth.tls -}}
{{- if $t.existingSecret -}}{{ $t.existingSecret }}
{{- else if and $t.certManager.issuerRef.name (ne .Values.membership.mode "none") -}}{{ include "locus.fullname" . }}-peer-tls
{{- end -}}
{{- end }}

{{/* The --membership value, empty for mode "none". */}}
{{- define "locus.membership" -}}
{{- $m := .Values.membership }}
{{- if eq $m.mode "dns" }}
{{- printf "dns://%s-peers.%s.svc.%s:%d" (include "locus.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.peer.port) }}
{{- else if eq $m.mode "etcd" }}
{{- if not $m.etcd.endpoints }}
{{- fail "membership.mode=etcd needs membership.etcd.endpoints (HOST:PORT, …)" }}
{{- end }}
{{- printf "etcd://%s/%s" (join "," $m.etcd.endpoints) (trimAll "/" (toString $m.etcd.prefix)) }}
{{- else if ne $m.mode "none" }}
{{- fail (printf "membership.mode must be dns, etcd or none, not %q" $m.mode) }}
{{- end }}
{{- end }}

{{/* The daemon's arguments (after the image's `tini -- locus`), as a JSON list. */}}
{{- define "locus.daemonArgs" -}}
{{- $v := .Values }}
{{- $a := list "daemon"
  "--socket" (include "locus.socketPath" .)
  "--cache-dir" (include "locus.cacheDir" .)
  "--cache-size" (toString $v.cache.size)
  "--metrics" (printf "0.0.0.0:%d" (int $v.metrics.port)) }}
{{- if ne $v.membership.mode "none" }}
{{- $a = concat $a (list "--listen" (printf "0.0.0.0:%d" (int $v.peer.port)) "--advertise" (printf "$(POD_IP):%d" (int $v.peer.port)) "--membership" (include "locus.membership" .)) }}
{{- if eq $v.membership.mode "etcd" }}
{{- $e := $v.membership.etcd }}
{{- if ne (toString $v.membership.ttl) "" }}
{{- $a = concat $a (list "--membership-ttl" (toString $v.membership.ttl)) }}
{{- end }}
{{- if $e.insecure }}
{{- if or $e.tls.existingSecret $e.auth.existingSecret }}
{{- fail "membership.etcd.insecure turns etcd authentication off; it cannot go with tls.existingSecret or auth.existingSecret" }}
{{- end }}
{{- $a = concat $a (list "--insecure-etcd") }}
{{- else }}
{{- if not $e.tls.existingSecret }}
{{- fail "membership.mode=etcd needs membership.etcd.tls.existingSecret (the etcd CA and a client certificate; add auth.user/auth.existingSecret for a password), or membership.etcd.insecure=true where no one else can reach etcd" }}
{{- end }}
{{- $d := include "locus.etcdTlsDir" . }}
{{- $a = concat $a (list "--etcd-ca" (printf "%s/ca.crt" $d) "--etcd-cert" (printf "%s/tls.crt" $d) "--etcd-key" (printf "%s/tls.key" $d)) }}
{{- end }}
{{- if or $e.auth.user $e.auth.existingSecret }}
{{- if not (and $e.auth.user $e.auth.existingSecret) }}
{{- fail "membership.etcd.auth: user and existingSecret go together" }}
{{- end }}
{{- $a = concat $a (list "--etcd-user" $e.auth.user "--etcd-password-file" (include "locus.etcdPasswordFile" .)) }}
{{- end }}
{{- end }}
{{- end }}
{{- if $v.mount.enabled }}
{{- $a = concat $a (list "--mount" (include "locus.mountDir" .) "--mount-allow-other") }}
{{- end }}
{{- with (toString $v.localAccess.group) }}
{{- $a = concat $a (list "--socket-group" . "--data-group" .) }}
{{- end }}
{{- if ne (toString $v.cache.chunkSize) "" }}
{{- $a = concat $a (list "--chunk-size" (toString $v.cache.chunkSize)) }}
{{- end }}
{{- range $flag, $val := dict "--replicas" $v.config.replicas "--load-epsilon" $v.config.loadEpsilon "--metadata-ttl" $v.config.metadataTtl "--concurrency" $v.config.concurrency "--mount-max-inodes" $v.config.mountMaxInodes }}
{{- if ne (toString $val) "" }}
{{- $a = concat $a (list $flag (toString $val)) }}
{{- end }}
{{- end }}
{{- $tlsSecret := include "locus.peerTlsSecret" . }}
{{- if and $v.peerAuth.tls.existingSecret $v.peerAuth.tls.certManager.issuerRef.name }}
{{- fail "peerAuth.tls: set either existingSecret or certManager.issuerRef, not both" }}
{{- end }}
{{- if and $v.peerAuth.token.existingSecret $tlsSecret }}
{{- fail "peerAuth: set either token.existingSecret or tls (existingSecret or certManager), not both" }}
{{- end }}
{{- if and $v.peerAuth.insecure (or $v.peerAuth.token.existingSecret $tlsSecret) }}
{{- fail "peerAuth: insecure turns authentication off; it cannot go with token.existingSecret or tls" }}
{{- end }}
{{- if include "locus.peerTokenSecret" . }}
{{- $a = concat $a (list "--peer-token-file" (include "locus.peerTokenFile" .)) }}
{{- end }}
{{- if $v.peerAuth.insecure }}
{{- $a = concat $a (list "--insecure-peers") }}
{{- end }}
{{- if $tlsSecret }}
{{- $d := include "locus.peerTlsDir" . }}
{{- $a = concat $a (list "--peer-tls-cert" (printf "%s/tls.crt" $d) "--peer-tls-key" (printf "%s/tls.key" $d) "--peer-tls-ca" (printf "%s/ca.crt" $d)) }}
{{- if $v.peerAuth.tls.serverName }}
{{- $a = concat $a (list "--peer-tls-name" (toString $v.peerAuth.tls.serverName)) }}
{{- end }}
{{- end }}
{{- with $v.s3.endpoint }}
{{- $a = concat $a (list "--s3-endpoint" (toString .)) }}
{{- end }}
{{- if $v.s3.virtualHosted }}
{{- $a = append $a "--s3-virtual-hosted" }}
{{- end }}
{{- range $v.fileRoots }}
{{- $a = concat $a (list "--file-root" (toString .)) }}
{{- end }}
{{- $ports := list (int $v.metrics.port) }}
{{- if ne $v.membership.mode "none" }}
{{- $ports = append $ports (int $v.peer.port) }}
{{- end }}
{{- range $name, $g := dict "hub" $v.gateways.hub "s3" $v.gateways.s3 }}
{{- if $g.enabled }}
{{- if has (int $g.port) $ports }}
{{- fail (printf "gateways.%s.port %d is taken by another port of the daemon (metrics, peer or the other gateway)" $name (int $g.port)) }}
{{- end }}
{{- $ports = append $ports (int $g.port) }}
{{- end }}
{{- end }}
{{- if and $v.gateways.s3.enabled $v.gateways.s3.anonymous $v.hostNetwork }}
{{- fail "gateways.s3.anonymous with hostNetwork: the NetworkPolicy does not apply on the host network, so anyone who reaches the node would read the buckets with the daemon's credentials; use a key pair (existingSecret)" }}
{{- end }}
{{- if $v.csi.enabled }}
{{- if not $v.mount.enabled }}
{{- fail "csi.enabled needs mount.enabled: the daemon mounts each volume (FUSE) where kubelet asks, which needs the privileged container" }}
{{- end }}
{{- $a = concat $a (list "--csi-socket" "/csi/csi.sock" "--node-id" "$(NODE_NAME)") }}
{{- if $v.csi.mounter.enabled }}
{{- $a = concat $a (list "--csi-mounter" "/run/locus-mounter/m.sock") }}
{{- end }}
{{- end }}
{{- if $v.gateways.hub.enabled }}
{{- $a = concat $a (list "--hub-gateway" (printf "0.0.0.0:%d" (int $v.gateways.hub.port))) }}
{{- end }}
{{- $g := $v.gateways.s3 }}
{{- if $g.enabled }}
{{- if not $g.buckets }}
{{- fail "gateways.s3.enabled needs gateways.s3.buckets: the buckets it serves" }}
{{- end }}
{{- if and $g.existingSecret $g.anonymous }}
{{- fail "gateways.s3: set either existingSecret (signed requests) or anonymous, not both" }}
{{- end }}
{{- if not (or $g.existingSecret $g.anonymous) }}
{{- fail "gateways.s3.enabled needs gateways.s3.existingSecret (a Secret with key `key`: ACCESS_KEY_ID:SECRET_ACCESS_KEY), or anonymous=true to serve unsigned requests" }}
{{- end }}
{{- $a = concat $a (list "--s3-gateway" (printf "0.0.0.0:%d" (int $g.port)) "--s3-gateway-buckets" (join "," $g.buckets)) }}
{{- if $g.anonymous }}
{{- $a = append $a "--s3-gateway-anonymous" }}
{{- else }}
{{- $a = concat $a (list "--s3-gateway-key-file" (include "locus.s3GatewayKeyFile" .)) }}
{{- end }}
{{- end }}
{{- range $v.extraArgs }}
{{- $a = append $a (toString .) }}
{{- end }}
{{- toJson $a }}
{{- end }}

{{/* The warm Job's arguments, as a JSON list. */}}
{{- define "locus.warmArgs" -}}
{{- $w := .Values.warm }}
{{- $a := list "warm" "--socket" (include "locus.socketPath" .) "--scope" (toString $w.scope) }}
{{- range $w.include }}
{{- $a = concat $a (list "--include" (toString .)) }}
{{- end }}
{{- range $w.exclude }}
{{- $a = concat $a (list "--exclude" (toString .)) }}
{{- end }}
{{- if $w.pin }}
{{- $a = append $a "--pin" }}
{{- end }}
{{- $a = append $a "--" }}
{{- range $w.uris }}
{{- $a = append $a (toString .) }}
{{- end }}
{{- toJson $a }}
{{- end }}

{{/* Where the S3 gateway's key pair is mounted. */}}
{{- define "locus.s3GatewayKeyFile" -}}
/etc/locus/s3-gateway/s3-gateway-key
{{- end }}
