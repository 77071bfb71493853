# Postern administrators: add, change and remove projects.
path "secret/data/postern/index" {
  capabilities = ["create", "read", "update"]
}

path "secret/data/postern/projects/*" {
  capabilities = ["create", "read", "update"]
}

path "secret/metadata/postern/projects/*" {
  capabilities = ["read", "list"]
}

path "secret/destroy/postern/projects/*" {
  capabilities = ["update"]
}

path "secret/data/postern/tokens/*" {
  capabilities = ["create", "read", "update"]
}

path "secret/metadata/postern/tokens/*" {
  capabilities = ["read", "list"]
}

path "secret/destroy/postern/tokens/*" {
  capabilities = ["update"]
}
