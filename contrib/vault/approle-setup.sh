#!/usr/bin/env bash
# Example: give a Postern sidecar its own AppRole with the sidecar policy, and an administrators'
# policy for people who run `postern project ...` against Vault. Run with a Vault token allowed to
# write policies and AppRoles (VAULT_ADDR and VAULT_TOKEN set).
set -euo pipefail
here=$(dirname "$0")

# KV v2 at secret/ (skip if it exists already).
vault secrets list -format=json | grep -q '"secret/"' || vault secrets enable -path=secret kv-v2

vault policy write postern-sidecar "$here/postern-sidecar.hcl"
vault policy write postern-admin "$here/postern-admin.hcl"

vault auth list -format=json | grep -q '"approle/"' || vault auth enable approle
# Short-lived tokens, renewed by Postern; a secret id that lasts until rotated.
vault write auth/approle/role/postern-sidecar \
    token_policies=postern-sidecar token_ttl=1h token_max_ttl=24h secret_id_ttl=0

install -d -m 0750 /etc/postern
vault read -field=role_id auth/approle/role/postern-sidecar/role-id > /etc/postern/vault-role-id
# Response-wrapped: the file holds a single-use wrapping token, which Postern unwraps once
# (store.vault.auth.approle.secret_id_wrapped: true). Drop -wrap-ttl for a plain secret id.
vault write -wrap-ttl=10m -field=wrapping_token -f auth/approle/role/postern-sidecar/secret-id \
    > /etc/postern/vault-secret-id
chmod 0600 /etc/postern/vault-role-id /etc/postern/vault-secret-id

cat <<CONF
Add to /etc/postern/postern.yaml:

store:
  vault:
    address: ${VAULT_ADDR}
    auth:
      approle:
        role_id: $(cat /etc/postern/vault-role-id)
        secret_id_file: /etc/postern/vault-secret-id
        secret_id_wrapped: true
CONF
