# kiln-base: default umask 027 and an idle shell timeout (CIS 5.4.3.x).
umask 027
TMOUT=900
readonly TMOUT
export TMOUT
