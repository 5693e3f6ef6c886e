# kiln-base: default umask 027, no core dumps and an idle shell timeout (CIS 5.4.3.x, 1.5.3; Lynis KRNL-5820).
umask 027
ulimit -c 0
TMOUT=900
readonly TMOUT
export TMOUT
