module github.com/postern/postern/integration/vaultdev

go 1.26

require (
	github.com/hashicorp/vault v1.14.2
	github.com/hashicorp/vault-plugin-secrets-kv v0.15.0
)

replace github.com/hashicorp/vault/sdk => github.com/hashicorp/vault/sdk v0.9.1
