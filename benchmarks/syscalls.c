/* The kernel's cost of each step of a guarded connect, timed one by one in
 * one process (net_steps.py): syscalls PORT N, with a server on
 * 127.0.0.1:PORT.  The pidfd is our own process's, the socket a copy of our
 * own (what the supervisor does with the child's). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e9+t.tv_nsec;}
int main(int argc,char**argv){
  int port=atoi(argv[1]); long n=atol(argv[2]);
  struct sockaddr_in sa={.sin_family=AF_INET,.sin_port=htons(port)};
  inet_pton(AF_INET,"127.0.0.1",&sa.sin_addr);
  int pidfd=syscall(SYS_pidfd_open,getpid(),0);
  double t[12]={0}; const char*names[12]={"socket","pidfd_getfd","getsockopt x3","fcntl getfl","process_vm_readv 16B","fcntl setfl x2","connect(nonblock)","poll(0)","getsockopt SO_ERROR","close dup","close own (child)","connect blocking (unconfined)"};
  char buf[16];
  for(long i=0;i<n;i++){
    double a=now(); int s=socket(AF_INET,SOCK_STREAM,0); double b=now(); t[0]+=b-a;
    int d=syscall(SYS_pidfd_getfd,pidfd,s,0); a=now(); t[1]+=a-b;
    int v; socklen_t l=4; getsockopt(d,SOL_SOCKET,SO_DOMAIN,&v,&l);getsockopt(d,SOL_SOCKET,SO_TYPE,&v,&l);getsockopt(d,SOL_SOCKET,SO_PROTOCOL,&v,&l); b=now(); t[2]+=b-a;
    int fl=fcntl(d,F_GETFL); a=now(); t[3]+=a-b;
    struct iovec lo={buf,16},re={&sa,16}; process_vm_readv(getpid(),&lo,1,&re,1,0); b=now(); t[4]+=b-a;
    fcntl(d,F_SETFL,fl|O_NONBLOCK); a=now();
    int r=connect(d,(void*)&sa,sizeof sa); b=now(); t[6]+=b-a;
    fcntl(d,F_SETFL,fl); a=now(); t[5]+=a-b; (void)r;
    struct pollfd p={d,POLLOUT,0}; poll(&p,1,0); b=now(); t[7]+=b-a;
    int e; l=4; getsockopt(d,SOL_SOCKET,SO_ERROR,&e,&l); a=now(); t[8]+=a-b;
    close(d); b=now(); t[9]+=b-a;
    close(s); a=now(); t[10]+=a-b;
  }
  for(long i=0;i<n;i++){int s=socket(AF_INET,SOCK_STREAM,0);double a=now();connect(s,(void*)&sa,sizeof sa);t[11]+=now()-a;close(s);}
  for(int i=0;i<12;i++)printf("%-30s %8.2f us\n",names[i],t[i]/n/1e3);
}
