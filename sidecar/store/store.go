// Package store defines where projects and tokens live. The sidecar reads projects and reads and
// writes tokens; administrators write projects. Two implementations plug in: the embedded store
// (store/boltstore, a bbolt database with each record encrypted, for a single host without Vault)
// and Vault (store/vaultstore, over the vault package). store/filestore is the earlier embedded
// store, one encrypted file rewritten on every write; boltstore migrates it. store/transfer copies
// everything between stores and through encrypted archives.
//
// Every token write is a check-and-set on the version read, so two Postern processes sharing a store
// never lose a rotated refresh token: the loser gets ErrConflict, re-reads, and uses what the other
// wrote.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/postern/postern/sidecar/project"
)

// ErrNotFound is returned when a project or token does not exist.
var ErrNotFound = errors.New("not found")

// ErrConflict is returned when a check-and-set write finds a version other than the one given.
var ErrConflict = errors.New("version conflict: the record was changed by someone else")

// ErrProjectsLost is returned by Projects when the store lists no project although it knows it
// held some: its data was replaced, emptied or rolled back, or it is not the store it was (a Vault
// path listing nothing where it listed projects). The sidecar treats it as a failed read: it keeps
// the projects it has, or, having none, defers mail; it never concludes that no project exists.
var ErrProjectsLost = errors.New("the store has lost projects it held")

// Projects is what the sidecar needs to route mail.
type Projects interface {
	// Projects returns every project, each with its Version set. An empty list means that no
	// project exists; a store that cannot vouch for that returns ErrProjectsLost instead.
	Projects(ctx context.Context) ([]project.Project, error)
}

// Stamper is implemented by a store that can tell cheaply, without decrypting or decoding a record,
// whether its projects changed. The sidecar reads the stamp on every reload and reads Projects only
// when it differs from the one it last loaded, so that an idle store of 100,000 projects costs a
// scan of its record headers, not a decoding of every project, each reload interval.
type Stamper interface {
	// ProjectsStamp returns a value that differs whenever any project record differs from what it
	// was when the same value was returned before (a write, a delete, a restored or replaced store,
	// a new key). It fails as Projects would, ErrProjectsLost included.
	ProjectsStamp(ctx context.Context) (string, error)
}

// Tokens is what the token broker needs.
type Tokens interface {
	// Token returns the token record of a project with its Version set, or ErrNotFound.
	Token(ctx context.Context, name string) (project.Token, error)
	// PutToken writes t if the stored version is still t.Version (0: the record must not exist yet)
	// and returns the new version; otherwise it returns ErrConflict and writes nothing.
	PutToken(ctx context.Context, name string, t project.Token) (int, error)
}

// Admin is what administrators' tools need on top of reading.
type Admin interface {
	Projects
	// Project returns one project with its Version set, or ErrNotFound.
	Project(ctx context.Context, name string) (project.Project, error)
	// PutProject creates or replaces a project. If p.Version is not 0 the write is a check-and-set
	// on that version. It returns the new version.
	PutProject(ctx context.Context, p project.Project) (int, error)
	// DeleteProject removes a project and its token record for good (`postern project purge`).
	// To remove a project whose mail Postfix may still hold, write its tombstone (Remove).
	DeleteProject(ctx context.Context, name string) error
}

// Store is everything: what `postern serve` and `postern project` open.
type Store interface {
	Admin
	Tokens
	// Close releases the store.
	Close() error
}

// Remove replaces the project called name with its tombstone (project.Tombstone at now), and
// erases the secrets of its token record when tokens is not nil: the record stays, in state
// needs_reauth and with the sign-in links it had used, until Purge. It returns the tombstone.
// Removing a removed project changes nothing and returns its tombstone.
//
// A tombstone keeps the project's senders routed to Postern, which defers their mail, so that mail
// Postfix still holds for the project never leaves through Postfix's default transport. Both
// writes are check-and-set; a conflict with a concurrent writer is retried on a fresh read.
func Remove(ctx context.Context, admin Admin, tokens Tokens, name string, now time.Time) (project.Project, error) {
	var tomb project.Project
	for attempt := 1; ; attempt++ {
		p, err := admin.Project(ctx, name)
		if err != nil {
			return project.Project{}, err
		}
		if p.IsRemoved() {
			tomb = p
			break
		}
		tomb = project.Tombstone(p, now)
		v, err := admin.PutProject(ctx, tomb)
		if errors.Is(err, ErrConflict) && attempt < removeAttempts {
			continue
		}
		if err != nil {
			return project.Project{}, fmt.Errorf("writing the tombstone of project %s: %w", name, err)
		}
		tomb.Version = v
		break
	}
	if tokens == nil {
		return tomb, nil
	}
	for attempt := 1; ; attempt++ {
		t, err := tokens.Token(ctx, name)
		if errors.Is(err, ErrNotFound) {
			return tomb, nil
		}
		if err != nil {
			return tomb, fmt.Errorf("reading the token record of project %s: %w", name, err)
		}
		if t.AccessToken.IsZero() && t.RefreshToken.IsZero() && t.State == project.TokenNeedsReauth {
			return tomb, nil
		}
		erased := project.Token{
			Account: t.Account, AccountID: t.AccountID, TenantID: t.TenantID,
			State: project.TokenNeedsReauth, Reason: "the project was removed",
			UpdatedAt: now.UTC(), Version: t.Version,
		}
		erased.KeepSignIns(t, now)
		_, err = tokens.PutToken(ctx, name, erased)
		if errors.Is(err, ErrConflict) && attempt < removeAttempts {
			continue
		}
		if err != nil {
			return tomb, fmt.Errorf("erasing the token of project %s: %w", name, err)
		}
		return tomb, nil
	}
}

// removeAttempts bounds the check-and-set retries of Remove.
const removeAttempts = 5
