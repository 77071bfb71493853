// Package transfer moves every project and token from one store to another: between the embedded
// store and Vault (`postern store migrate`), and through an encrypted archive (`postern store export`
// and `import`) for backups and for moving to another host.
//
//  1. Read takes a snapshot of a store: every project, and the token record of each. A token record
//     whose project does not exist is not part of a store's contents and is left behind.
//  2. Write first checks the target: a project or token present in both stores is refused, naming
//     the projects, unless Options.Replace is set. Nothing is written when it refuses.
//  3. It then writes the projects (in batches of BatchSize where the target can write many at once)
//     and the tokens, reporting progress after each batch or record. Versions start again in the
//     target, as each store counts its own; with Replace the target's versions continue.
//  4. Export writes a snapshot as an age file (filippo.io/age) encrypted with a passphrase
//     (scrypt): one JSON line of header, then one JSON line per record, with the secrets. Import
//     reads it back, checks it whole, and writes it like a migration.
//
// Nothing here prints or logs a secret: the records travel only inside the encrypted archive and
// between the stores.
package transfer

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/store"
)

// BatchSize is how many projects are written at once into a store that can write many.
const BatchSize = 500

// Source is a store to read from.
type Source interface {
	store.Projects
	Token(ctx context.Context, name string) (project.Token, error)
}

// Target is a store to write to.
type Target interface {
	Project(ctx context.Context, name string) (project.Project, error)
	PutProject(ctx context.Context, p project.Project) (int, error)
	store.Tokens
}

// batchWriter is a Target that writes many projects at once (boltstore, filestore, vaultstore).
type batchWriter interface {
	PutProjects(ctx context.Context, ps []project.Project) ([]int, error)
}

// Options tune Write.
type Options struct {
	// Replace overwrites projects and tokens the target holds already. Without it, any name present in
	// both stores makes Write refuse before writing anything.
	Replace bool
	// Progress, when not nil, is called as records are read and written with what is being done
	// ("reading", "writing"), the records done and the total.
	Progress func(stage string, done, total int)
}

func (o Options) progress(stage string, done, total int) {
	if o.Progress != nil {
		o.Progress(stage, done, total)
	}
}

// Record is one project and, when it has one, its token record.
type Record struct {
	Project project.Project
	Token   *project.Token
}

// Snapshot is the contents of a store.
type Snapshot struct {
	Records []Record
}

// Counts returns the number of projects and of tokens.
func (s *Snapshot) Counts() (projects, tokens int) {
	for _, r := range s.Records {
		if r.Token != nil {
			tokens++
		}
	}
	return len(s.Records), tokens
}

// Read takes a snapshot of src.
func Read(ctx context.Context, src Source, o Options) (*Snapshot, error) {
	ps, err := src.Projects(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading projects: %w", err)
	}
	snap := &Snapshot{Records: make([]Record, 0, len(ps))}
	for i, p := range ps {
		r := Record{Project: p}
		t, err := src.Token(ctx, p.Name)
		switch {
		case err == nil:
			r.Token = &t
		case !errors.Is(err, store.ErrNotFound):
			return nil, fmt.Errorf("reading the token of project %q: %w", p.Name, err)
		}
		snap.Records = append(snap.Records, r)
		o.progress("reading", i+1, len(ps))
	}
	return snap, nil
}

// ConflictError is returned by Write when the target holds some of the snapshot's projects or tokens
// and Options.Replace is not set.
type ConflictError struct {
	// Names are the projects present in both, in the snapshot's order.
	Names []string
}

func (e *ConflictError) Error() string {
	names := e.Names
	more := ""
	if len(names) > 10 {
		names, more = names[:10], fmt.Sprintf(" and %d more", len(e.Names)-10)
	}
	return fmt.Sprintf("the target already holds %d of these projects (%s%s); nothing was written: use --replace to overwrite them",
		len(e.Names), strings.Join(names, ", "), more)
}

// Write writes snap into dst. See the package documentation for the order and the checks.
func Write(ctx context.Context, dst Target, snap *Snapshot, o Options) error {
	// The target's token versions, for check-and-set writes over existing records.
	tokenVersions := make(map[string]int)
	var conflicts []string
	for _, r := range snap.Records {
		name := r.Project.Name
		_, perr := dst.Project(ctx, name)
		if perr != nil && !errors.Is(perr, store.ErrNotFound) {
			return fmt.Errorf("checking project %q in the target: %w", name, perr)
		}
		t, terr := dst.Token(ctx, name)
		if terr != nil && !errors.Is(terr, store.ErrNotFound) {
			return fmt.Errorf("checking the token of project %q in the target: %w", name, terr)
		}
		if terr == nil {
			tokenVersions[name] = t.Version
		}
		if perr == nil || terr == nil {
			conflicts = append(conflicts, name)
		}
	}
	if len(conflicts) > 0 && !o.Replace {
		return &ConflictError{Names: conflicts}
	}

	_, tokens := snap.Counts()
	total := len(snap.Records) + tokens
	done := 0
	batch, canBatch := dst.(batchWriter)
	for start := 0; start < len(snap.Records); {
		end := start + 1
		if canBatch {
			end = min(start+BatchSize, len(snap.Records))
		}
		ps := make([]project.Project, 0, end-start)
		for _, r := range snap.Records[start:end] {
			p := r.Project
			p.Version = 0 // replace whatever is there; each store counts its own versions
			ps = append(ps, p)
		}
		var err error
		if canBatch {
			_, err = batch.PutProjects(ctx, ps)
		} else {
			_, err = dst.PutProject(ctx, ps[0])
		}
		if err != nil {
			return fmt.Errorf("writing projects (%d of %d written): %w", start, len(snap.Records), err)
		}
		done += end - start
		o.progress("writing", done, total)
		start = end
	}
	for _, r := range snap.Records {
		if r.Token == nil {
			continue
		}
		t := *r.Token
		t.Version = tokenVersions[r.Project.Name]
		if _, err := dst.PutToken(ctx, r.Project.Name, t); err != nil {
			return fmt.Errorf("writing the token of project %q: %w", r.Project.Name, err)
		}
		done++
		o.progress("writing", done, total)
	}
	return nil
}

// Copy reads src and writes it into dst.
func Copy(ctx context.Context, dst Target, src Source, o Options) (*Snapshot, error) {
	snap, err := Read(ctx, src, o)
	if err != nil {
		return nil, err
	}
	return snap, Write(ctx, dst, snap, o)
}
