package transfer

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"filippo.io/age"

	"github.com/postern/postern/sidecar/project"
)

// The archive is an age file encrypted to a passphrase (age's scrypt recipient), holding JSON lines:
//
//	{"format":"postern-store-archive","version":1,"created":"...","projects":N,"tokens":M}
//	{"name":"client-a","project":{...},"token":{...}}     one line per project; "token" only if it has one
//
// "project" and "token" are the records as project.MarshalStored and MarshalStoredToken write them,
// secrets included. age authenticates every 64 KiB chunk and the end of the stream, so a changed or
// cut archive is refused; the counts in the header are checked too.

const (
	archiveFormat  = "postern-store-archive"
	archiveVersion = 1

	// MinPassphrase is the shortest passphrase Export accepts.
	MinPassphrase = 12
)

// ErrPassphrase is returned by ReadArchive when the passphrase does not open the archive, or the file
// is not an archive.
var ErrPassphrase = errors.New("wrong passphrase, or not a Postern store archive")

type archiveHeader struct {
	Format   string    `json:"format"`
	Version  int       `json:"version"`
	Created  time.Time `json:"created"`
	Projects int       `json:"projects"`
	Tokens   int       `json:"tokens"`
}

type archiveRecord struct {
	Name    string          `json:"name"`
	Project json.RawMessage `json:"project"`
	Token   json.RawMessage `json:"token,omitempty"`
}

// ArchiveOptions tune Export and ReadArchive.
type ArchiveOptions struct {
	// WorkFactor is the scrypt work factor (log2 of N) Export uses; 0 means age's default (18, about a
	// second and 256 MiB). Tests lower it.
	WorkFactor int
	// Progress, when not nil, is called after each record with the stage ("exporting",
	// "importing"), the records done and the total.
	Progress func(stage string, done, total int)
	// Now returns the time written in the header; nil means time.Now.
	Now func() time.Time
}

// Export writes snap to w as an archive encrypted with passphrase.
func Export(w io.Writer, snap *Snapshot, passphrase string, o ArchiveOptions) error {
	if len(passphrase) < MinPassphrase {
		return fmt.Errorf("the passphrase must be at least %d characters", MinPassphrase)
	}
	r, err := age.NewScryptRecipient(passphrase)
	if err != nil {
		return err
	}
	if o.WorkFactor > 0 {
		r.SetWorkFactor(o.WorkFactor)
	}
	enc, err := age.Encrypt(w, r)
	if err != nil {
		return fmt.Errorf("encrypting the archive: %w", err)
	}
	bw := bufio.NewWriter(enc)
	je := json.NewEncoder(bw)
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	projects, tokens := snap.Counts()
	if err := je.Encode(archiveHeader{Format: archiveFormat, Version: archiveVersion, Created: now().UTC(), Projects: projects, Tokens: tokens}); err != nil {
		return fmt.Errorf("writing the archive: %w", err)
	}
	for i, r := range snap.Records {
		rec := archiveRecord{Name: r.Project.Name}
		if rec.Project, err = project.MarshalStored(r.Project); err != nil {
			return fmt.Errorf("encoding project %q: %w", r.Project.Name, err)
		}
		if r.Token != nil {
			if rec.Token, err = project.MarshalStoredToken(*r.Token); err != nil {
				return fmt.Errorf("encoding the token of project %q: %w", r.Project.Name, err)
			}
		}
		err = je.Encode(rec)
		clear(rec.Project)
		clear(rec.Token)
		if err != nil {
			return fmt.Errorf("writing the archive: %w", err)
		}
		if o.Progress != nil {
			o.Progress("exporting", i+1, len(snap.Records))
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("writing the archive: %w", err)
	}
	if err := enc.Close(); err != nil {
		return fmt.Errorf("writing the archive: %w", err)
	}
	return nil
}

// ReadArchive decrypts and checks a whole archive and returns its contents.
func ReadArchive(r io.Reader, passphrase string, o ArchiveOptions) (*Snapshot, error) {
	id, err := age.NewScryptIdentity(passphrase)
	if err != nil {
		return nil, err
	}
	dec, err := age.Decrypt(r, id)
	if err != nil {
		var noMatch *age.NoIdentityMatchError
		if errors.As(err, &noMatch) {
			return nil, ErrPassphrase
		}
		return nil, fmt.Errorf("reading the archive: %w (%w)", ErrPassphrase, err)
	}
	jd := json.NewDecoder(bufio.NewReader(dec))
	var h archiveHeader
	if err := jd.Decode(&h); err != nil {
		return nil, fmt.Errorf("reading the archive's header: %w", err)
	}
	if h.Format != archiveFormat {
		return nil, fmt.Errorf("not a Postern store archive (format %q)", h.Format)
	}
	if h.Version != archiveVersion {
		return nil, fmt.Errorf("archive version %d is not one this version of Postern reads (%d)", h.Version, archiveVersion)
	}
	snap := &Snapshot{Records: make([]Record, 0, min(h.Projects, 1<<16))}
	seen := make(map[string]bool)
	for {
		var rec archiveRecord
		err := jd.Decode(&rec)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading the archive after %d projects: %w", len(snap.Records), err)
		}
		if !project.ValidName(rec.Name) {
			return nil, fmt.Errorf("the archive holds an invalid project name %q", rec.Name)
		}
		if seen[rec.Name] {
			return nil, fmt.Errorf("the archive holds project %q twice", rec.Name)
		}
		seen[rec.Name] = true
		p, err := project.UnmarshalStored(rec.Project)
		clear(rec.Project)
		if err != nil {
			return nil, fmt.Errorf("project %q in the archive: %w", rec.Name, err)
		}
		p.Name, p.Version = rec.Name, 0
		out := Record{Project: p}
		if rec.Token != nil {
			t, err := project.UnmarshalStoredToken(rec.Token)
			clear(rec.Token)
			if err != nil {
				return nil, fmt.Errorf("the token of project %q in the archive: %w", rec.Name, err)
			}
			t.Version = 0
			out.Token = &t
		}
		snap.Records = append(snap.Records, out)
		if o.Progress != nil {
			o.Progress("importing", len(snap.Records), h.Projects)
		}
	}
	if projects, tokens := snap.Counts(); projects != h.Projects || tokens != h.Tokens {
		return nil, fmt.Errorf("the archive holds %d projects and %d tokens, but its header says %d and %d", projects, tokens, h.Projects, h.Tokens)
	}
	return snap, nil
}
