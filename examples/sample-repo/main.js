// CrowNest sample: plain console.log only, so it runs on Node and on QuickJS alike.
const numbers = [3, 1, 4, 1, 5, 9, 2, 6];
let sum = 0;
for (const n of numbers) {
  sum += n;
}
console.log("hello from JavaScript");
console.log("sum of " + numbers.length + " numbers: " + sum);
