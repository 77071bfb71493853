# Postern sidecar: read projects, read and write tokens, nothing else.
path "secret/data/postern/index" {
  capabilities = ["read"]
}

path "secret/data/postern/projects/*" {
  capabilities = ["read"]
}

path "secret/metadata/postern/projects/*" {
  capabilities = ["read", "list"]
}

path "secret/data/postern/tokens/*" {
  capabilities = ["create", "read", "update"]
}
