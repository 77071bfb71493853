package vaultstore_test

import (
	"context"
	"log"

	"github.com/postern/postern/sidecar/store/vaultstore"
	"github.com/postern/postern/vault"
)

// The sidecar opens the store with its Vault settings (here: the token Vault Agent keeps in a
// file) and reads the projects; the store keeps the token alive until Close.
func ExampleOpen() {
	ctx := context.Background()
	s, err := vaultstore.Open(ctx,
		vault.Options{Address: "https://vault.example:8200", Auth: vault.Auth{Method: vault.MethodTokenFile, TokenFile: "/run/vault-agent/token"}},
		vaultstore.Options{Mount: "secret", Prefix: "postern"})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	projects, err := s.Projects(ctx) // every reload interval: one Vault request in steady state
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("%d projects", len(projects))
}
