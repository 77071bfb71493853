package signin

import (
	"context"

	"github.com/postern/postern/sidecar/credential"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/upstream"
)

// Credentials is the one sign-in to an upstream: *credential.Manager.
type Credentials interface {
	Verify(ctx context.Context, p project.Project, attempt func(upstream.Auth) error) error
}

var _ Credentials = (*credential.Manager)(nil)

// UpstreamCheck returns a TestAuth: through creds (Verify: the new token is not renewed, and the
// outcome is reported to its source, so a project refused before shows healthy once this
// succeeds), it takes a connection to
// p's upstream from pools, signed in with the credential the project has now (after a sign-in, the
// new access token), and closes it again without sending mail.
//
// Give it Pools of its own, made with the sidecar's upstream.Options: a pooled connection that
// signed in earlier would be handed out without a new AUTH and prove nothing, so every checked
// connection is discarded rather than released, and a pool used only for checks never holds one.
func UpstreamCheck(pools *upstream.Pools, creds Credentials) func(context.Context, project.Project) error {
	return func(ctx context.Context, p project.Project) error {
		return creds.Verify(ctx, p, func(a upstream.Auth) error {
			c, err := pools.Acquire(ctx, p, a)
			if err != nil {
				return err
			}
			c.Discard()
			return nil
		})
	}
}
