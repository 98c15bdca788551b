package leastconn

// Backup backends are one more use of the priority groups SRV records
// make: a backup backend is a group after every other, so the pick takes
// it only when no backend before it can take the request (up, ready, not
// ejected, not full), and a sticky session on it moves back once one can.

// backupPriority is the priority of backup backends: after any SRV
// record's (those are 0-65535).
const backupPriority = 1 << 20

// hasBackup tells whether a static backend of s is a backup.
func (s *poolSpec) hasBackup() bool {
	if s == nil {
		return false
	}
	for _, a := range s.backends {
		if a.backup {
			return true
		}
	}
	return false
}

// priorityOf is the priority of s's static backend i.
func (s *poolSpec) priorityOf(i int) int {
	if s != nil && i < len(s.backends) && s.backends[i].backup {
		return backupPriority
	}
	return 0
}
