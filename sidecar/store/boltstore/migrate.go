package boltstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/crypto/chacha20poly1305"

	"github.com/postern/postern/sidecar/store/internal/storefile"
)

// Migration from package filestore's single encrypted file. That format is frozen; it is read here
// and never written:
//
//	"POSTERN1" (8 bytes) | nonce (24 bytes) | XChaCha20-Poly1305(key, nonce, JSON, additional data "POSTERN1")
//
// where the JSON is {"generation": n, "projects": {name: {"version": n, "data": record}}, "tokens":
// {...}} and a record without data is a tombstone. The generation counts the file's writes; the
// index file beside it (Path + ".index", package storefile) holds the generation and the number of
// projects of the last write, and is the same file, with the same meaning, for the database.
//
// Open migrates such a file once, under the exclusive lock on the lock file (the lock file package
// filestore's writers take too, so none of them writes during the migration):
//
//  1. The old file is read and decrypted with the key file. Any failure stops here, changing nothing.
//  2. A new database is written at a temporary name in the same directory: every record under its
//     own name with its version, tombstones included, so versions carry on, and the file's
//     generation and number of projects in the meta bucket, so the index file goes on describing
//     the store. It is synced.
//  3. The old file is hard-linked to Path + ".migrated" (or, if that name holds another file,
//     Path + ".migrated-<time>"), and the directory synced: the backup exists before anything moves.
//  4. The new database is renamed over Path and the directory synced.
//
//  5. The index file is brought up to date, unless it says the old file had lost its projects (it
//     holds none at an older generation than the index): the index is then left as it is, so the
//     database reads as lost too, with store.ErrProjectsLost, until the right file is restored
//     (put back at Path, it is migrated again).
//
// A crash before step 4 leaves the old file at Path, and the next Open migrates again (an existing
// backup that is the same file is reused); a crash after it leaves the migrated store. The old file
// is never removed: the operator deletes the backup once satisfied.

const legacyMagic = "POSTERN1"

// MigratedSuffix is appended to the path of a migrated file store's data file to name its backup.
const MigratedSuffix = ".migrated"

type legacyData struct {
	Generation int64                   `json:"generation,omitempty"`
	Projects   map[string]legacyRecord `json:"projects"`
	Tokens     map[string]legacyRecord `json:"tokens"`
}

type legacyRecord struct {
	Version int             `json:"version"`
	Data    json.RawMessage `json:"data,omitempty"`
}

// isLegacy says whether the file at path starts with package filestore's magic.
func isLegacy(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("opening store: %w", err)
	}
	defer f.Close()
	head := make([]byte, len(legacyMagic))
	if _, err := io.ReadFull(f, head); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return false, nil // too short for either format: bbolt reports it
		}
		return false, fmt.Errorf("reading store %s: %w", path, err)
	}
	return string(head) == legacyMagic, nil
}

// readLegacy decrypts a file store's data file.
func readLegacy(path string, key []byte) (*legacyData, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading store: %w", err)
	}
	headerSize := len(legacyMagic) + chacha20poly1305.NonceSizeX
	if len(b) < headerSize || string(b[:len(legacyMagic)]) != legacyMagic {
		return nil, fmt.Errorf("%s is not a Postern file store: %w", path, ErrDecrypt)
	}
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		return nil, err
	}
	plain, err := aead.Open(nil, b[len(legacyMagic):headerSize], b[headerSize:], []byte(legacyMagic))
	if err != nil {
		return nil, fmt.Errorf("cannot decrypt %s: %w", path, ErrDecrypt)
	}
	defer clear(plain)
	var d legacyData
	if err := json.Unmarshal(plain, &d); err != nil {
		return nil, fmt.Errorf("decoding store %s: %w", path, err)
	}
	return &d, nil
}

// migrate replaces the file store's data file at s.path by a database holding the same records,
// keeping the old file as a backup.
func (s *Store) migrate(ctx context.Context, key []byte) error {
	unlock, err := s.flock(ctx, true)
	if err != nil {
		return err
	}
	defer unlock()
	if legacy, err := isLegacy(s.path); err != nil || !legacy {
		return err // another process migrated it meanwhile
	}
	d, err := readLegacy(s.path, key)
	if err != nil {
		return fmt.Errorf("migrating the file store %s: %w", s.path, err)
	}
	live := 0
	for _, r := range d.Projects {
		if r.Data != nil {
			live++
		}
	}
	ix := storefile.Index{Generation: d.Generation, Projects: live}
	lost := storefile.CheckIndex(s.path, ix.Generation, ix.Projects)
	projects, tokens := 0, 0
	backup := ""
	fill := func(db *bolt.DB) error {
		return db.Update(func(tx *bolt.Tx) error {
			if err := initBuckets(tx, s.key, ix); err != nil {
				return err
			}
			for _, c := range []struct {
				bucket  []byte
				records map[string]legacyRecord
				n       *int
			}{{bucketProjects, d.Projects, &projects}, {bucketTokens, d.Tokens, &tokens}} {
				b := tx.Bucket(c.bucket)
				for name, r := range c.records {
					v := tombstone(r.Version)
					if r.Data != nil {
						v = s.key.seal(c.bucket, []byte(name), r.Version, r.Data)
						*c.n++
					}
					if err := b.Put([]byte(name), v); err != nil {
						return err
					}
				}
			}
			return nil
		})
	}
	keep := func() error {
		var err error
		backup, err = keepBackup(s.path)
		return err
	}
	if err := buildAtomic(s.path, fill, keep); err != nil {
		return fmt.Errorf("migrating the file store %s: %w", s.path, err)
	}
	for _, r := range d.Projects {
		clear(r.Data)
	}
	for _, r := range d.Tokens {
		clear(r.Data)
	}
	if lost == nil {
		storefile.WriteIndex(s.log, s.path, ix)
	} else {
		s.log.Error("the migrated file store had lost its projects; its index file is kept as it was", "err", lost)
	}
	s.log.Info("migrated the store from a single encrypted file to an embedded database; the old file is kept as a backup",
		"path", s.path, "backup", backup, "projects", projects, "tokens", tokens)
	return nil
}

// keepBackup hard-links the file at path to its backup name and syncs the directory. It returns the
// backup's path.
func keepBackup(path string) (string, error) {
	backup := path + MigratedSuffix
	err := os.Link(path, backup)
	if errors.Is(err, os.ErrExist) {
		a, aerr := os.Stat(path)
		b, berr := os.Stat(backup)
		if aerr == nil && berr == nil && os.SameFile(a, b) {
			err = nil // a migration interrupted before its rename made it
		} else {
			backup = path + MigratedSuffix + "-" + time.Now().UTC().Format("20060102T150405.000000000")
			err = os.Link(path, backup)
		}
	}
	if err != nil {
		return "", fmt.Errorf("keeping the old file as a backup: %w", err)
	}
	return backup, syncDir(filepath.Dir(path))
}
