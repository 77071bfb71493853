package boltstore

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/sidecar/store/internal/storefile"
)

// newKeySuffix names the key file a rekey writes before it re-encrypts the records.
const newKeySuffix = ".new"

// Rekey replaces the store's key: it writes a new key to KeyFile + ".new", re-encrypts every record
// under it in one transaction that also records the new key's id, and renames the new key file over
// the old one. A crash before the commit leaves the store under the old key (and a stray ".new"
// file, replaced by the next rekey); a crash after it leaves the store under the new key, which Open
// and every operation find in the ".new" file and move into place. Other processes with the store
// open pick the new key up at their next operation. progress, when not nil, is called after every
// record with the number done and the total.
//
// Backups and exports made before a rekey stay under the old key or passphrase.
func (s *Store) Rekey(ctx context.Context, progress func(done, total int)) error {
	if err := s.rollForward(ctx); err != nil {
		return err
	}
	newPath := s.keyFile + newKeySuffix
	return s.withDB(ctx, true, func(db *bolt.DB) error {
		key, err := createKey(newPath, s.keyFile)
		if err != nil {
			return err
		}
		next, err := newRecordKey(key)
		clear(key)
		if err != nil {
			return err
		}
		records := 0
		var ix storefile.Index
		err = db.Update(func(tx *bolt.Tx) error {
			if err := s.checkKey(tx); err != nil {
				return err
			}
			if err := s.checkLost(tx); err != nil {
				return err
			}
			old := s.currentKey()
			type rec struct{ bucket, name []byte }
			var all []rec
			for _, bucket := range [][]byte{bucketProjects, bucketTokens} {
				err := tx.Bucket(bucket).ForEach(func(name, _ []byte) error {
					all = append(all, rec{bucket, bytes.Clone(name)})
					return nil
				})
				if err != nil {
					return err
				}
			}
			records = len(all)
			for i, r := range all {
				b := tx.Bucket(r.bucket)
				plain, version, err := old.open(r.bucket, r.name, b.Get(r.name))
				if err != nil {
					return err
				}
				if plain != nil {
					err = b.Put(r.name, next.seal(r.bucket, r.name, version, plain))
					clear(plain)
					if err != nil {
						return err
					}
				}
				if progress != nil {
					progress(i+1, len(all))
				}
			}
			if ix, err = count(tx, 0); err != nil {
				return err
			}
			return tx.Bucket(bucketMeta).Put(metaKeyID, next.id)
		})
		if err != nil {
			os.Remove(newPath)
			return fmt.Errorf("rekeying store %s: %w", s.path, err)
		}
		storefile.WriteIndex(s.log, s.path, ix)
		s.mu.Lock()
		s.key, s.keyFrom = next, newPath
		s.mu.Unlock()
		if err := s.moveNewKey(); err != nil {
			return err
		}
		s.log.Info("rekeyed the store; back up the new key file, backups of the store made before need the old key", "path", s.path, "key_file", s.keyFile, "records", records)
		return nil
	})
}

// keyFromNew says whether the key in use came from a rekey's new key file.
func (s *Store) keyFromNew() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.keyFrom != s.keyFile
}

// rollForward finishes a rekey interrupted after its commit: when the store is under the key in
// KeyFile + ".new", that file is renamed over KeyFile.
func (s *Store) rollForward(ctx context.Context) error {
	return s.withDB(ctx, true, func(db *bolt.DB) error {
		if err := db.View(s.checkKey); err != nil {
			return err
		}
		if !s.keyFromNew() {
			return nil
		}
		if err := s.moveNewKey(); err != nil {
			return err
		}
		s.log.Warn("finished an interrupted rekey: the new key file replaced the old one", "key_file", s.keyFile)
		return nil
	})
}

// moveNewKey renames the new key file over the key file. The caller holds the exclusive lock and
// has checked that the store is under the new key.
func (s *Store) moveNewKey() error {
	if err := os.Rename(s.keyFile+newKeySuffix, s.keyFile); err != nil {
		return fmt.Errorf("rekeying store %s: the records are under the key in %s, but it could not replace %s: %w", s.path, s.keyFile+newKeySuffix, s.keyFile, err)
	}
	if err := syncDir(filepath.Dir(s.keyFile)); err != nil {
		return fmt.Errorf("rekeying store %s: %w", s.path, err)
	}
	s.mu.Lock()
	s.keyFrom = s.keyFile
	s.mu.Unlock()
	return nil
}
