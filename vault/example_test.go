package vault_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"

	"github.com/postern/postern/vault"
)

// A long-running client signs in with AppRole (the secret id delivered response-wrapped), keeps its
// token alive with Run, and updates a secret with check-and-set.
func Example() {
	ctx := context.Background()
	c, err := vault.New(ctx, vault.Options{
		Address: "https://vault.example:8200",
		Auth: vault.Auth{
			Method:          vault.MethodAppRole,
			RoleIDFile:      "/etc/postern/vault-role-id",
			SecretIDFile:    "/run/postern/vault-secret-id",
			SecretIDWrapped: true,
		},
		Logger: slog.Default(),
	})
	if err != nil {
		log.Fatal(err)
	}
	go c.Run(ctx)

	data, version, err := c.Read(ctx, "postern/tokens/client-a")
	if err != nil && !errors.Is(err, vault.ErrNotFound) {
		log.Fatal(err)
	}
	if data == nil {
		data = map[string]any{} // not there yet: version is 0, or that of the deleted record
	}
	data["state"] = "ok"
	if _, err := c.Write(ctx, "postern/tokens/client-a", data, version); errors.Is(err, vault.ErrConflict) {
		fmt.Println("someone else wrote it first: read again")
	}
}
